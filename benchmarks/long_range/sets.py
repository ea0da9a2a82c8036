"""Long-range test sets from the SPC/Fw reference, and a model's errors on them.

1. Water-dimer curves: rigid equilibrium monomers, dipoles aligned head to tail or side by
   side, interaction energy E(dimer) - 2 E(monomer) from 4 A to 20 A (no periodic boundaries;
   the reference is bare Coulomb + Lennard-Jones, so the tail is purely electrostatic).
2. Liquid frames with the far-field force separated: F_far = F_reference - F_near, where
   F_near counts only molecules whose oxygens are within ``near_cutoff`` (minimum image) with
   bare Coulomb and Lennard-Jones, plus the intramolecular terms. |F_far| / |F| per atom is
   the long-range share of the force, which a strictly local model cannot see.
3. Cell vs 2x2x2 supercell of the same periodic liquid: node attention runs over the atoms
   of the cell, so a model with it can depend on the choice of cell; a local model cannot.
4. Monomers 30 A and 100 A apart: E(n) - n E(1) should vanish (additivity over fragments).

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
    """Forces (eV/A) of SPC/Fw counting only molecules with oxygens within ``near_cutoff``
    (minimum image; all pairs of a non-periodic frame within it), bare Coulomb and
    Lennard-Jones, plus the intramolecular terms."""
    positions, cell = frame.positions, frame.cell
    periodic = bool(frame.pbc.all())
    inverse = np.linalg.inv(cell) if periodic else np.zeros((3, 3))
    n_molecules = len(frame) // 3
    charges = np.array([spcfw.CHARGE_O, spcfw.CHARGE_H, spcfw.CHARGE_H])
    qq = COULOMB * charges[:, None] * charges[None, :]  # (3, 3)
    sigma, epsilon = spcfw.SIGMA_O * 10, spcfw.EPSILON_O / KJ_PER_EV
    molecules = positions.reshape(n_molecules, 3, 3)
    oxygens = molecules[:, 0]
    forces = np.zeros_like(molecules)
    for a in range(n_molecules):
        images = -np.round((oxygens - oxygens[a]) @ inverse) @ cell  # minimum-image shifts
        distance = np.linalg.norm(oxygens + images - oxygens[a], axis=1)
        partners = np.flatnonzero((distance < near_cutoff) & (np.arange(n_molecules) != a))
        d = molecules[a][None, :, None, :] - (molecules[partners] + images[partners, None, :])[:, None, :, :]
        r = np.linalg.norm(d, axis=-1)  # (partners, 3, 3)
        magnitude = qq / r**3
        sr6 = (sigma / r[:, 0, 0]) ** 6
        magnitude[:, 0, 0] += 24 * epsilon * (2 * sr6 * sr6 - sr6) / r[:, 0, 0] ** 2
        forces[a] += np.einsum("pij,pijx->ix", magnitude, d)
    return forces.reshape(-1, 3) + intramolecular_forces(positions)


def molecule_energy(molecule: np.ndarray) -> float:
    """SPC/Fw bond and angle energy (eV) of one (O, H, H) molecule."""
    o, h1, h2 = molecule
    total = sum(0.5 * spcfw.BOND_K / 100 * (np.linalg.norm(h - o) - spcfw.BOND_LENGTH * 10) ** 2 for h in (h1, h2))
    u, v = h1 - o, h2 - o
    theta = math.acos(np.clip(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))
    return (total + 0.5 * spcfw.ANGLE_K * (theta - spcfw.ANGLE) ** 2) / KJ_PER_EV


def intramolecular_forces(positions: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Bond and angle forces (eV/A), molecule by molecule, by central differences."""
    molecules = positions.reshape(-1, 3, 3)
    forces = np.zeros_like(molecules)
    for m, molecule in enumerate(molecules):
        for index in np.ndindex(3, 3):
            step = np.zeros((3, 3))
            step[index] = h
            forces[m][index] = -(molecule_energy(molecule + step) - molecule_energy(molecule - step)) / (2 * h)
    return forces.reshape(-1, 3)


def model_outputs(model, frame: Frame) -> tuple[float, np.ndarray]:
    energy, forces, _ = model(torch.tensor(frame.positions), torch.tensor(frame.numbers),
                              torch.tensor(frame.cell), torch.tensor(frame.pbc), torch.tensor(frame.charge),
                              torch.tensor(frame.spin))
    return float(energy.detach()), forces.detach().numpy()


def liquid_split(frames: list[Frame], near_cutoff: float, count: int) -> list[tuple[Frame, np.ndarray]]:
    """Up to ``count`` periodic water frames whose half box exceeds the cutoff, with F_far."""
    chosen = [f for f in frames if f.pbc.all() and np.linalg.norm(f.cell, axis=1).min() / 2 > near_cutoff]
    chosen = chosen[::max(1, len(chosen) // count)][:count]  # spread over runs (boxes, temperatures)
    return [(f, f.forces - near_forces(f, near_cutoff)) for f in chosen]


def far_field_metrics(forces: list[np.ndarray], liquid: list[tuple[Frame, np.ndarray]],
                      near_cutoff: float) -> dict:
    """How much of the far-field force a model reproduces, and its error by far-field share.

    capture = sum (F_model - F_near) . F_far / sum |F_far|^2: the regression slope of what the
    model adds beyond the near field onto the true far field (1: all of it; 0: none, for errors
    uncorrelated with F_far), with its leave-one-frame-out jackknife standard error."""
    def capture(keep: list[int]) -> float:
        added = np.concatenate([forces[k] - liquid[k][0].forces + liquid[k][1] for k in keep])
        far = np.concatenate([liquid[k][1] for k in keep])
        return float(np.sum(added * far) / np.sum(far * far))

    frames = list(range(len(liquid)))
    jackknife = math.nan
    if len(frames) > 1:
        leave_one_out = np.array([capture([k for k in frames if k != left]) for left in frames])
        jackknife = float(np.sqrt((len(frames) - 1) * np.mean((leave_one_out - leave_one_out.mean()) ** 2)))
    model = np.concatenate(forces)
    reference = np.concatenate([f.forces for f, _ in liquid])
    far = np.concatenate([far for _, far in liquid])
    errors = np.linalg.norm(model - reference, axis=1)
    shares = np.linalg.norm(far, axis=1) / np.linalg.norm(reference, axis=1)
    edges = np.quantile(shares, [0, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {
        "near_cutoff_a": near_cutoff,
        "frames": len(liquid),
        "atoms": int(len(reference)),
        "force_rms_ev_a": float(np.sqrt(np.mean(reference**2))),
        "far_field_rms_ev_a": float(np.sqrt(np.mean(far**2))),
        "force_rmse_ev_a": float(np.sqrt(np.mean((model - reference) ** 2))),
        "capture": capture(frames),
        "capture_stderr": jackknife,  # frame jackknife
        "force_error_by_long_range_share": [
            {"share_from": float(lo), "share_to": float(hi),
             "mean_force_error_ev_a": float(errors[(shares >= lo) & (shares <= hi)].mean())}
            for lo, hi in zip(edges[:-1], edges[1:])],
    }


def supercell_consistency(model, frames: list[Frame]) -> dict:
    """The same periodic system as its cell and as the 2x2x2 supercell: a model that depends only
    on the periodic structure gives equal energy per atom and equal forces."""
    energy, forces = [], []
    for frame in frames:
        e_cell, f_cell = model_outputs(model, frame)
        shifts = np.array(list(np.ndindex(2, 2, 2)), dtype=float) @ frame.cell
        big = Frame(np.tile(frame.numbers, 8), np.concatenate([frame.positions + s for s in shifts]),
                    2 * frame.cell, frame.pbc, 0.0)
        e_big, f_big = model_outputs(model, big)
        energy.append((e_big / 8 - e_cell) / len(frame))
        forces.append(f_big[:len(frame)] - f_cell)
    forces = np.concatenate(forces)
    return {"frames": len(frames), "atoms": len(frames[0]),
            "max_abs_energy_per_atom_ev": float(np.abs(energy).max()),
            "force_rms_difference_ev_a": float(np.sqrt(np.mean(forces**2))),
            "force_max_difference_ev_a": float(np.abs(forces).max())}


def separated_monomers(model, spacing: float, counts=(2, 3, 4)) -> list[dict]:
    """E(n identical monomers ``spacing`` A apart on a line) - n E(monomer): zero for any
    model whose energy is additive over fragments that do not interact (reference: the
    electrostatic tail, below 0.1 meV at 30 A)."""
    molecule = oriented_water(np.array([1.0, 0.0, 0.0]))
    single = Frame(np.array([8, 1, 1]), molecule, np.zeros((3, 3)), np.zeros(3, bool), 0.0)
    e_monomer = model_outputs(model, single)[0]
    rows = []
    for count in counts:
        positions = np.concatenate([molecule + [0.0, k * spacing, 0.0] for k in range(count)])
        frame = Frame(np.tile([8, 1, 1], count), positions, np.zeros((3, 3)), np.zeros(3, bool), 0.0)
        rows.append({"monomers": count, "spacing": spacing,
                     "excess_ev": model_outputs(model, frame)[0] - count * e_monomer})
    return rows


def evaluate(model_path: Path, curves: dict, splits: list[list[tuple[Frame, np.ndarray]]],
             cutoffs: list[float], small_boxes: list[Frame]) -> dict:
    from allscaip.io import load_model

    model = load_model(model_path, dtype=torch.float64)
    monomer = curves["aligned"][0].positions[:3]
    monomer_frame = Frame(np.array([8, 1, 1]), monomer, np.zeros((3, 3)), np.zeros(3, bool), 0.0)
    e_monomer, _ = model_outputs(model, monomer_frame)
    result = {"model": str(model_path), "parameters": sum(p.numel() for p in model.parameters()),
              "dimer": {}, "liquid": []}
    for arrangement, frames in curves.items():
        result["dimer"][arrangement] = [
            {"separation": r, "reference_ev": f.energy, "model_ev": model_outputs(model, f)[0] - 2 * e_monomer}
            for r, f in zip(SEPARATIONS, frames)]
    for liquid, cutoff in zip(splits, cutoffs):
        forces = [model_outputs(model, frame)[1] for frame, _ in liquid]
        result["liquid"].append(far_field_metrics(forces, liquid, cutoff))
    result["supercell"] = supercell_consistency(model, small_boxes)
    result["separated"] = separated_monomers(model, 30.0) + separated_monomers(model, 100.0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", type=Path)
    parser.add_argument("--test", type=Path, required=True, help="held-out data (liquid frames are used)")
    parser.add_argument("--frames", type=int, default=10, help="liquid frames per near cutoff")
    parser.add_argument("--near-cutoffs", type=float, nargs="+", default=[5.0, 9.0],
                        help="A; frames whose half box is shorter are skipped")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    curves = {arrangement: dimer_curve(arrangement) for arrangement in ("aligned", "side")}
    frames = read_frames(args.test)
    splits = [liquid_split(frames, cutoff, args.frames) for cutoff in args.near_cutoffs]
    for cutoff, split in zip(args.near_cutoffs, splits):
        if not split:
            raise SystemExit(f"no periodic frame in {args.test} has a half box longer than {cutoff} A")
    small_boxes = [f for f in frames if f.pbc.all() and len(f) == 192][:3]  # 64 waters; 2x2x2 = 1536 atoms
    results = [evaluate(path, curves, splits, args.near_cutoffs, small_boxes) for path in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long_range.json").write_text(json.dumps(results, indent=1))
    print("interaction energy (meV): separation  reference  " + "  ".join(p.parent.name for p in args.models))
    for arrangement in curves:
        for k, r in enumerate(SEPARATIONS):
            row = [results[0]["dimer"][arrangement][k]["reference_ev"] * 1e3] + \
                  [res["dimer"][arrangement][k]["model_ev"] * 1e3 for res in results]
            print(f"{arrangement:8s} {r:5.1f} A " + " ".join(f"{v:9.2f}" for v in row))
    for res in results:
        for split in res["liquid"]:
            print(f"{res['model']}: beyond {split['near_cutoff_a']} A ({split['frames']} frames) far RMS "
                  f"{split['far_field_rms_ev_a']:.3f}, force RMSE {split['force_rmse_ev_a']:.3f} eV/A, "
                  f"capture {split['capture']:.3f} ± {split['capture_stderr']:.3f}")
        print(f"{res['model']}: E(n monomers far apart) - n E(monomer), meV: " + ", ".join(
            f"n={row['monomers']} at {row['spacing']:g} A {1e3 * row['excess_ev']:.2f}" for row in res["separated"]))
        cell = res["supercell"]
        print(f"{res['model']}: cell vs 2x2x2 supercell: max |dE|/atom {cell['max_abs_energy_per_atom_ev']:.1e} eV, "
              f"rms dF {cell['force_rms_difference_ev_a']:.1e} eV/A")


if __name__ == "__main__":
    main()
