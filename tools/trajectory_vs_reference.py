"""A model against SPC/Fw on the frames of its own water MD run (project venv, no fairchem).

For every ``--stride``-th frame of a trajectory (topology PDB + DCD, water ordered O, H, H):
density, the closest O-O distance, SPC/Fw's and the model's configurational pressure (the
virial part, bar), the same difference with the molecular virial (forces acting on the molecules'
centres of mass, so intramolecular forces drop out), the model's energy error per molecule and
its force RMSE relative to SPC/Fw's RMS force. Used to find
where a model's own ensemble leaves its training data (the v2 card's density probes):

    .venv/bin/python tools/trajectory_vs_reference.py MODEL.pt RUN/box.pdb RUN/liquid/trajectory.dcd --stride 7
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

WATER_G_MOL = 18.015
AVOGADRO = 6.02214076e23


def intramolecular_virial(positions: np.ndarray, forces: np.ndarray, numbers: np.ndarray) -> float:
    """Trace of sum_i (r_i - R_com(i)) . F_i for whole waters: atomic minus molecular virial."""
    masses = np.where(numbers == 8, 15.999, 1.008).reshape(-1, 3, 1)
    molecules = positions.reshape(-1, 3, 3)
    centres = (masses * molecules).sum(axis=1, keepdims=True) / masses.sum(axis=1, keepdims=True)
    return float(((molecules - centres) * forces.reshape(-1, 3, 3)).sum())


def closest_oxygens(positions: np.ndarray, cell: np.ndarray) -> float:
    oxygens = positions[0::3]
    separation = oxygens[None, :, :] - oxygens[:, None, :]
    fractional = separation @ np.linalg.inv(cell)
    distance = np.linalg.norm((fractional - np.round(fractional)) @ cell, axis=-1)
    np.fill_diagonal(distance, np.inf)
    return float(distance.min())


def main(argv: list[str] | None = None) -> int:
    import MDAnalysis
    from ase.geometry import cellpar_to_cell

    from allscaip.evaluate import BAR_PER_EV_A3
    from allscaip.io import load_model
    from allscaip.reference.labels import KJ_PER_EV, SpcfwLabeller
    from allscaip.reference.md_frames import whole_waters

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("topology", help="PDB of the run (atoms O, H, H per water)")
    parser.add_argument("trajectory", help="DCD of the run")
    parser.add_argument("--stride", type=int, default=10)
    args = parser.parse_args(argv)

    model = load_model(args.model, dtype=torch.float64).eval()
    universe = MDAnalysis.Universe(args.topology, args.trajectory)
    numbers = np.array([8 if atom.name.startswith("O") else 1 for atom in universe.atoms])
    labeller = SpcfwLabeller()
    print(f"{'t ps':>7} {'g/cm3':>6} {'min O-O A':>9} {'P_ref bar':>10} {'P_model bar':>11} {'diff bar':>9} "
          f"{'mol diff':>9} {'dE kJ/mol':>9} {'F RMSE/RMS':>10}")
    differences, molecular_differences, energy_errors = [], [], []
    for frame in universe.trajectory[::args.stride]:
        cell = cellpar_to_cell(frame.dimensions)
        positions = whole_waters(universe.atoms.positions.astype(float), cell)
        reference = labeller.label(numbers, positions, cell)
        energy, forces, virial = model(torch.tensor(positions), torch.tensor(numbers), torch.tensor(cell),
                                  torch.tensor([True] * 3), torch.tensor(0), torch.tensor(1), True, True)
        volume = abs(np.linalg.det(cell))
        p_reference = -np.trace(reference.stress) / 3 * BAR_PER_EV_A3
        p_model = np.trace(virial.detach().numpy()) / 3 / volume * BAR_PER_EV_A3
        model_forces = forces.detach().numpy()
        correction = (intramolecular_virial(positions, model_forces, numbers)
                      - intramolecular_virial(positions, reference.forces, numbers)) / 3 / volume * BAR_PER_EV_A3
        molecular_differences.append(p_model - p_reference - correction)
        energy_errors.append((float(energy.detach()) - reference.energy) / (len(numbers) // 3) * KJ_PER_EV)
        error = np.sqrt(((forces.detach().numpy() - reference.forces) ** 2).mean() / (reference.forces ** 2).mean())
        density = len(numbers) // 3 * WATER_G_MOL / AVOGADRO / (volume * 1e-24)
        differences.append(p_model - p_reference)
        print(f"{frame.time:7.1f} {density:6.3f} {closest_oxygens(positions, cell):9.2f} {p_reference:10.0f} "
              f"{p_model:11.0f} {p_model - p_reference:9.0f} "
              f"{molecular_differences[-1]:9.0f} {energy_errors[-1]:9.3f} {error:10.3f}", flush=True)
    for name, values, unit in (("pressure, atomic virial", differences, "bar"),
                               ("pressure, molecular virial", molecular_differences, "bar"),
                               ("energy per molecule", energy_errors, "kJ/mol")):
        print(f"model - reference {name}: mean {np.mean(values):.3f} "
              f"+- {np.std(values, ddof=1) / np.sqrt(len(values)):.3f} {unit} over {len(values)} frames "
              "(+- is the standard error of independent frames; consecutive frames are correlated)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
