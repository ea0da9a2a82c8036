"""A model's energy drift in NVE from a protocol replica's state: does the model heat the run?

A Langevin run's mean temperature above its bath's can come from forces that are not the
gradient of the energy (or not smooth enough for the time step), which the thermostat then
pays for; or from sampling noise. Started from the same state (positions, velocities, box of
``REPLICA/liquid/checkpoint.xml``, elements and bonds from ``REPLICA/box.pdb``), velocity
Verlet without a thermostat separates the two: a drift of the total energy is heat the
model puts in.

    .venv/bin/python tools/nve_drift.py MODEL models/.../protocol-model-64/replica-0 --steps 1000 --compile

The protocol's hydrogen mass repartitioning (``--hydrogen-mass``, mass moved from the bonded
heavy atom) and time step; the model through its ASE calculator (``--dtype``, ``--compile``
as in the run). Prints the drift (slope of a straight-line fit of the total energy against
time) and the RMS fluctuation about it, per atom.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def replica_state(replica: Path):
    """(atomic numbers, positions Å, velocities Å/fs, cell Å, bonds) of a replica's liquid checkpoint."""
    import openmm
    from openmm import app, unit

    pdb = app.PDBFile(str(replica / "box.pdb"))
    state = openmm.XmlSerializer.deserialize((replica / "liquid" / "checkpoint.xml").read_text())
    numbers = np.array([atom.element.atomic_number for atom in pdb.topology.atoms()])
    positions = state.getPositions(asNumpy=True).value_in_unit(unit.angstrom)
    velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.angstrom / unit.femtosecond)
    cell = state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)
    if len(numbers) != len(positions):
        raise ValueError(f"{replica}: box.pdb has {len(numbers)} atoms, the checkpoint {len(positions)}")
    bonds = [(a.index, b.index) for a, b in pdb.topology.bonds()]
    return numbers, np.asarray(positions), np.asarray(velocities), np.asarray(cell), bonds


def repartitioned_masses(numbers: np.ndarray, bonds: list[tuple[int, int]], hydrogen_mass: float) -> np.ndarray:
    """Standard masses with each hydrogen raised to ``hydrogen_mass`` (amu), the difference
    taken from its bonded heavy atom, as OpenMM's ``hydrogenMass`` does."""
    from ase.data import atomic_masses

    masses = atomic_masses[numbers].copy()
    for i, j in bonds:
        for hydrogen, heavy in ((i, j), (j, i)):
            if numbers[hydrogen] == 1 and numbers[heavy] != 1:
                masses[heavy] -= hydrogen_mass - masses[hydrogen]
                masses[hydrogen] = hydrogen_mass
    return masses


def nve_drift(model: str, replica: Path, steps: int, timestep_fs: float, hydrogen_mass: float,
              dtype: str, compile: bool, sample_every: int = 10) -> dict:
    """Run velocity Verlet from the replica's state; the total energy's drift and fluctuation."""
    from ase import Atoms, units
    from ase.md.verlet import VelocityVerlet

    from allscaip.calculator import AllScAIPCalculator

    numbers, positions, velocities, cell, bonds = replica_state(replica)
    atoms = Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)
    atoms.set_masses(repartitioned_masses(numbers, bonds, hydrogen_mass))
    atoms.set_velocities(velocities / units.fs)  # Å/fs -> ASE's velocity unit
    atoms.calc = AllScAIPCalculator(model, dtype=dtype, compile=compile)
    samples: list[tuple[float, float]] = []
    record = lambda: samples.append((atoms.get_total_energy(), atoms.get_temperature()))  # noqa: E731
    record()
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dynamics.attach(record, interval=sample_every)
    start = time.perf_counter()
    dynamics.run(steps)
    energy, temperature = np.array(samples[1:]).T if len(samples) > 2 else np.array(samples).T
    times_ps = np.arange(len(energy)) * sample_every * timestep_fs / 1000.0
    slope, intercept = np.polyfit(times_ps, energy, 1)
    n_atoms = len(atoms)
    return {"atoms": n_atoms, "steps": steps, "timestep_fs": timestep_fs,
            "drift_mev_atom_ps": 1000.0 * slope / n_atoms,
            "fluctuation_mev_atom": 1000.0 * float(np.std(energy - (slope * times_ps + intercept))) / n_atoms,
            "temperature_start_K": float(samples[0][1]), "temperature_mean_K": float(np.mean(temperature)),
            "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("replica", type=Path, help="a protocol replica folder (box.pdb, liquid/checkpoint.xml)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--timestep", type=float, default=1.5, help="fs (the protocol's)")
    parser.add_argument("--hydrogen-mass", type=float, default=4.0, help="amu (the protocol's)")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = nve_drift(args.model, args.replica, args.steps, args.timestep, args.hydrogen_mass, args.dtype,
                       args.compile)
    print(f"{result['atoms']} atoms, {args.steps} steps of {args.timestep} fs, {args.dtype}"
          f"{', compiled' if args.compile else ''}: drift {result['drift_mev_atom_ps']:+.4f} meV/atom/ps, "
          f"fluctuation {result['fluctuation_mev_atom']:.4f} meV/atom, T {result['temperature_start_K']:.1f} K at "
          f"the start, {result['temperature_mean_K']:.1f} K mean ({result['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
