"""A model's pressure at a fixed density: NVT water, the mean pressure with its error.

An NPT density check of a 64-water box is slow to converge (the density's statistical
inefficiency is ~3.5 ps, so 4 x 9 ps hold ~6 effective samples and say 0.97 +- 0.02 g/cm^3).
The pressure at a fixed density decorrelates within a picosecond. Through the compressibility
kappa_T (SPC/Fw: 4.2e-5 /bar from the twin run's volume fluctuations) a mean pressure P at the
reference's density means the model's density at 1 bar is off by about -kappa_T * P
(relative), e.g. +200 bar <-> -0.8 %. Measured on one core: 6 ps (17 min for the v2 model)
give +-390 bar, i.e. +-1.6 % in density, about what 4 x 9 ps of NPT on two cores give.

Two estimators with the same mean: the atomic pressure (virial of all forces, kinetic energy
of all atoms) and the molecular one (virial of the forces at the molecules' centres of mass,
their kinetic energy). The stiff O-H bonds make the atomic one fluctuate by thousands of bar
per sample but decorrelate in ~40 fs; the molecular one fluctuates less and decorrelates in
~0.3 ps, and the two errors of the mean came out equal (v2 model, 6 ps).

    .venv/bin/python tools/pressure_probe.py MODEL --density 1.0126 --out runs/probe.csv

The start is the 64-water frame of ``--start`` (npz shards; default the SPC/Fw training set)
whose density is closest to ``--density``, its molecules' centres scaled to that density
exactly. Langevin dynamics (ASE) with the protocol's hydrogen mass repartitioning and time
step; the model through its calculator with ``compile=True``; both pressures every
``--sample-every`` steps. The mean and its error come from the protocols'
estimator (statistical inefficiency and block averages).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WATER_MASS_G = 18.01528
AVOGADRO = 6.02214076e23
EV_A3_TO_BAR = 1.602176634e6


def density_g_cm3(n_molecules: int, volume_a3: float) -> float:
    return n_molecules * WATER_MASS_G / AVOGADRO / (volume_a3 * 1e-24)


def start_frame(folder: Path, n_molecules: int, density: float):
    """The n-molecule periodic frame closest to ``density``, scaled to it exactly (molecules
    kept rigid: their oxygens' positions scale, the hydrogens move with them)."""
    from allscaip.data import read_frames
    from allscaip.reference.md_frames import whole_waters

    frames = [f for f in read_frames(folder) if np.any(f.pbc) and len(f.numbers) == 3 * n_molecules]
    if not frames:
        raise ValueError(f"no periodic frame with {n_molecules} waters in {folder}")
    frame = min(frames, key=lambda f: abs(density_g_cm3(n_molecules, abs(np.linalg.det(f.cell))) - density))
    positions = whole_waters(np.asarray(frame.positions), np.asarray(frame.cell)).reshape(-1, 3, 3)
    scale = (density_g_cm3(n_molecules, abs(np.linalg.det(frame.cell))) / density) ** (1 / 3)
    positions += (scale - 1.0) * positions[:, :1]
    return np.asarray(frame.numbers), positions.reshape(-1, 3), np.asarray(frame.cell) * scale


def pressures(atoms) -> tuple[float, float]:
    """(atomic, molecular) instantaneous pressure in bar of a water box (O, H, H per molecule).
    The molecular virial is the atomic one less sum_i F_i . (r_i - R_i), R_i the centre of mass
    of atom i's molecule (the same strain derivative with the molecules kept rigid)."""
    from allscaip.reference.md_frames import whole_waters

    stress = atoms.get_stress(voigt=False, include_ideal_gas=False)
    forces = atoms.get_forces().reshape(-1, 3, 3)
    volume = atoms.get_volume()
    masses = atoms.get_masses().reshape(-1, 3, 1)
    positions = whole_waters(atoms.get_positions(), np.asarray(atoms.cell)).reshape(-1, 3, 3)
    centres = (masses * positions).sum(axis=1, keepdims=True) / masses.sum(axis=1, keepdims=True)
    velocities = atoms.get_velocities().reshape(-1, 3, 3)
    centre_velocities = (masses * velocities).sum(axis=1) / masses.sum(axis=1)
    virial = -np.trace(stress) * volume  # sum_i r_i . F_i in its periodic (strain derivative) form
    molecular_virial = virial - float(np.sum(forces * (positions - centres)))
    atomic_kinetic = float(np.sum(atoms.get_masses()[:, None] * atoms.get_velocities() ** 2))
    molecular_kinetic = float(np.sum(masses.sum(axis=1) * centre_velocities**2))
    return ((atomic_kinetic + virial) / (3 * volume) * EV_A3_TO_BAR,
            (molecular_kinetic + molecular_virial) / (3 * volume) * EV_A3_TO_BAR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--density", type=float, default=1.0126, help="g/cm^3 (default: SPC/Fw's, the twin run)")
    parser.add_argument("--molecules", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=298.15)
    parser.add_argument("--equilibration", type=float, default=2.0, help="ps discarded")
    parser.add_argument("--production", type=float, default=10.0, help="ps sampled")
    parser.add_argument("--timestep", type=float, default=1.5, help="fs (with --hydrogen-mass)")
    parser.add_argument("--hydrogen-mass", type=float, default=4.0, help="amu, repartitioned from oxygen")
    parser.add_argument("--friction", type=float, default=1.0, help="1/ps")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--precision", choices=["float32", "float64"], default="float32", help="as the protocols")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--start", type=Path, default=ROOT / "datasets" / "spcfw-train-v2")
    parser.add_argument("--out", type=Path, required=True, help="CSV of the pressure samples")
    args = parser.parse_args(argv)

    import torch
    from ase import Atoms, units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from allscaip.calculator import AllScAIPCalculator
    from allscaip.protocols.analysis import estimate

    torch.set_num_threads(args.threads)
    numbers, positions, cell = start_frame(args.start, args.molecules, args.density)
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    masses = atoms.get_masses()
    hydrogens = numbers == 1
    masses[~hydrogens] -= 2 * (args.hydrogen_mass - masses[hydrogens][0])  # each water's mass unchanged
    masses[hydrogens] = args.hydrogen_mass
    atoms.set_masses(masses)
    atoms.calc = AllScAIPCalculator(model_path=args.model, dtype=args.precision, compile=True)
    MaxwellBoltzmannDistribution(atoms, temperature_K=args.temperature, rng=np.random.default_rng(args.seed))
    dynamics = Langevin(atoms, args.timestep * units.fs, temperature_K=args.temperature,
                        friction=args.friction / (1000 * units.fs), rng=np.random.default_rng(args.seed + 1))
    skip = round(args.equilibration * 1000 / args.timestep)
    steps = skip + round(args.production * 1000 / args.timestep)
    samples, started = [], time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["time_ps", "pressure_bar", "molecular_pressure_bar", "temperature_k"])
        for step in range(0, steps, args.sample_every):
            dynamics.run(args.sample_every)
            if step + args.sample_every <= skip:
                continue
            samples.append(pressures(atoms))
            writer.writerow([f"{(step + args.sample_every) * args.timestep / 1000:.4f}", *(f"{p:.2f}" for p in samples[-1]),
                             f"{atoms.get_temperature():.2f}"])
            if len(samples) % 100 == 0:
                handle.flush()
                print(f"{(step + args.sample_every) * args.timestep / 1000:7.2f} ps  P {np.mean(samples, axis=0)[0]:8.1f} bar, "
                      f"molecular {np.mean(samples, axis=0)[1]:8.1f} bar ({len(samples)} samples, "
                      f"{time.perf_counter() - started:.0f} s)", flush=True)
    volume = atoms.get_volume()
    print(f"{args.model}: {args.molecules} waters at {density_g_cm3(args.molecules, volume):.4f} g/cm^3, "
          f"{args.temperature} K, {args.production} ps after {args.equilibration} ps "
          f"({time.perf_counter() - started:.0f} s):")
    for name, series in zip(("atomic", "molecular"), np.array(samples).T):
        result = estimate(series)
        print(f"  {name:9s} P = {result.mean:6.0f} +- {result.stderr:4.0f} bar (statistical inefficiency "
              f"{result.statistical_inefficiency:.1f} samples of {args.sample_every} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
