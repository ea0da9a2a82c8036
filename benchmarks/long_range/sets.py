"""Long-range test sets from the SPC/Fw reference, and a model's errors on them.

1. Water-dimer curves: rigid equilibrium monomers, dipoles aligned head to tail or side by
   side, interaction energy E(dimer) - 2 E(monomer) from 4 A to 20 A (no periodic boundaries;
   the reference is bare Coulomb + Lennard-Jones, so the tail is purely electrostatic).
2. Liquid frames with the far-field force separated: F_far = F_reference - F_near, where
   F_near counts only molecules whose oxygens are within ``near_cutoff`` (minimum image) with
   bare Coulomb and Lennard-Jones, plus the intramolecular terms. |F_far| / |F| per atom is
   the long-range share of the force, which a strictly local model cannot see.

    .venv/bin/python benchmarks/long_range/sets.py MODEL.pt [MODEL2.pt ...] --test data/spcfw-test --out DIR
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from allscaip.data import Frame, read_frames
from allscaip.reference import spcfw
from allscaip.reference.labels import KJ_PER_EV, SpcfwLabeller
from allscaip.reference.water import spcfw_geometry

COULOMB = 138.935456 / KJ_PER_EV * 10  # eV A e^-2
SEPARATIONS = (4.0, 5.0, 6.0, 7.0, 8.0, 10.0, 12.0, 15.0, 20.0)


def oriented_water(dipole_axis: np.ndarray) -> np.ndarray:
    """Equilibrium SPC/Fw water, centred on its oxygen, dipole (O -> H bisector) along the axis."""
    geometry = spcfw_geometry()
    bisector = (geometry[1] + geometry[2]) / 2
    bisector /= np.linalg.norm(bisector)
    axis = dipole_axis / np.linalg.norm(dipole_axis)
    v, c = np.cross(bisector, axis), float(np.dot(bisector, axis))
    skew = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    rotation = np.eye(3) + skew + skew @ skew / (1 + c)
    return geometry @ rotation.T


def dimer_curve(arrangement: str) -> list[Frame]:
    """Labelled dimers at SEPARATIONS: 'aligned' (head to tail along x) or 'side' (dipoles
    along x, displaced along y)."""
    x = np.array([1.0, 0.0, 0.0])
    offset = x if arrangement == "aligned" else np.array([0.0, 1.0, 0.0])
    labeller = SpcfwLabeller(platform="Reference")
    numbers = np.array([8, 1, 1, 8, 1, 1])
    molecule = oriented_water(x)
    return [labeller.label(numbers, np.concatenate([molecule, molecule + r * offset]), None)
            for r in SEPARATIONS]


def near_forces(frame: Frame, near_cutoff: float) -> np.ndarray:
    """Forces (eV/A) of SPC/Fw counting only molecules with oxygens within ``near_cutoff``."""
    positions, cell = frame.positions, frame.cell
    inverse = np.linalg.inv(cell)
    charges = np.tile([spcfw.CHARGE_O, spcfw.CHARGE_H, spcfw.CHARGE_H], len(frame) // 3)
    sigma, epsilon = spcfw.SIGMA_O * 10, spcfw.EPSILON_O / KJ_PER_EV
    forces = np.zeros_like(positions)
    oxygens = positions[0::3]
    for a in range(len(oxygens)):
        shift_frac = oxygens - oxygens[a]
        shift_frac = shift_frac @ inverse
        images = -np.round(shift_frac) @ cell  # minimum-image shift of each molecule
        distance = np.linalg.norm(oxygens + images - oxygens[a], axis=1)
        for b in np.flatnonzero((distance < near_cutoff) & (np.arange(len(oxygens)) != a)):
            for i in range(3):
                for j in range(3):
                    d = positions[3 * a + i] - (positions[3 * b + j] + images[b])
                    r = np.linalg.norm(d)
                    magnitude = COULOMB * charges[3 * a + i] * charges[3 * b + j] / r**3
                    if i == 0 and j == 0:
                        sr6 = (sigma / r) ** 6
                        magnitude += 24 * epsilon * (2 * sr6 * sr6 - sr6) / r**2
                    forces[3 * a + i] += magnitude * d
    return forces + intramolecular_forces(positions)


def intramolecular_forces(positions: np.ndarray) -> np.ndarray:
    """Bond and angle forces of SPC/Fw (eV/A) by central differences of the energy."""
    def energy(p):
        total = 0.0
        for o, h1, h2 in p.reshape(-1, 3, 3):
            for h in (h1, h2):
                total += 0.5 * spcfw.BOND_K / 100 * (np.linalg.norm(h - o) - spcfw.BOND_LENGTH * 10) ** 2
            u, v = h1 - o, h2 - o
            theta = math.acos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))
            total += 0.5 * spcfw.ANGLE_K * (theta - spcfw.ANGLE) ** 2
        return total / KJ_PER_EV

    forces = np.zeros_like(positions)
    h = 1e-5
    for index in np.ndindex(positions.shape):
        step = np.zeros_like(positions)
        step[index] = h
        forces[index] = -(energy(positions + step) - energy(positions - step)) / (2 * h)
    return forces


def model_outputs(model, frame: Frame) -> tuple[float, np.ndarray]:
    energy, forces, _ = model(torch.tensor(frame.positions), torch.tensor(frame.numbers),
                              torch.tensor(frame.cell), torch.tensor(frame.pbc), torch.tensor(frame.charge),
                              torch.tensor(frame.spin))
    return float(energy.detach()), forces.detach().numpy()


def evaluate(model_path: Path, curves: dict, liquid: list[tuple[Frame, np.ndarray]]) -> dict:
    from allscaip.io import load_model

    model = load_model(model_path, dtype=torch.float64)
    monomer = curves["aligned"][0].positions[:3]
    monomer_frame = Frame(np.array([8, 1, 1]), monomer, np.zeros((3, 3)), np.zeros(3, bool), 0.0)
    e_monomer, _ = model_outputs(model, monomer_frame)
    result = {"model": str(model_path), "dimer": {}, "liquid": {}}
    for arrangement, frames in curves.items():
        result["dimer"][arrangement] = [
            {"separation": r, "reference_ev": f.energy, "model_ev": model_outputs(model, f)[0] - 2 * e_monomer}
            for r, f in zip(SEPARATIONS, frames)]
    errors, shares = [], []
    for frame, far in liquid:
        _, forces = model_outputs(model, frame)
        errors.append(np.linalg.norm(forces - frame.forces, axis=1))
        shares.append(np.linalg.norm(far, axis=1) / np.linalg.norm(frame.forces, axis=1))
    errors, shares = np.concatenate(errors), np.concatenate(shares)
    edges = np.quantile(shares, [0, 0.25, 0.5, 0.75, 0.9, 1.0])
    result["liquid"] = {
        "force_error_by_long_range_share": [
            {"share_from": float(lo), "share_to": float(hi),
             "mean_force_error_ev_a": float(errors[(shares >= lo) & (shares <= hi)].mean())}
            for lo, hi in zip(edges[:-1], edges[1:])],
        "far_field_rms_ev_a": float(np.sqrt(np.mean(np.concatenate([far for _, far in liquid]) ** 2))),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, required=True, help="held-out data (liquid frames are used)")
    parser.add_argument("--frames", type=int, default=6, help="liquid frames to split (64-water boxes)")
    parser.add_argument("--near-cutoff", type=float, default=6.0, help="A")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves = {arrangement: dimer_curve(arrangement) for arrangement in ("aligned", "side")}
    frames = [f for f in read_frames(args.test) if f.pbc.all() and len(f) == 192][:args.frames]
    liquid = [(f, f.forces - near_forces(f, args.near_cutoff)) for f in frames]
    results = [evaluate(path, curves, liquid) for path in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_range.json").write_text(json.dumps(results, indent=1))
    print("interaction energy (meV): separation  reference  " + "  ".join(p.stem for p in args.models))
    for arrangement in curves:
        for k, r in enumerate(SEPARATIONS):
            row = [results[0]["dimer"][arrangement][k]["reference_ev"] * 1e3] + \
                  [res["dimer"][arrangement][k]["model_ev"] * 1e3 for res in results]
            print(f"{arrangement:8s} {r:5.1f} A " + " ".join(f"{v:9.2f}" for v in row))
    print(f"far-field force RMS (beyond {args.near_cutoff} A): {results[0]['liquid']['far_field_rms_ev_a']:.3f} eV/A")
    for res in results:
        print(res["model"], [round(b["mean_force_error_ev_a"], 3) for b in res["liquid"]["force_error_by_long_range_share"]])


if __name__ == "__main__":
    main()
