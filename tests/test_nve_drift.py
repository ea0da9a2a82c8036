"""tools/nve_drift.py: a replica's state read in the right units, the protocol's hydrogen mass
repartitioning, and a float64 NVE run of the shipped model that conserves its energy."""

from pathlib import Path

import numpy as np
import openmm
import pytest
from ase.data import atomic_masses
from openmm import app, unit

from allscaip.models import small_water_model_path
from conftest import golden_structures, load_script, to_atoms

TOOL = Path(__file__).resolve().parent.parent / "tools" / "nve_drift.py"
AMU_KG, BOLTZMANN = 1.66053906660e-27, 1.380649e-23


def write_replica(folder: Path, temperature: float = 300.0) -> tuple[np.ndarray, np.ndarray]:
    """A protocol-like replica folder for the golden 16-water box: box.pdb (HOH residues) and
    liquid/checkpoint.xml (positions, velocities, box); returns (positions Å, velocities Å/fs)."""
    atoms = to_atoms(next(s for s in golden_structures() if s["name"] == "water_box16_pbc"))
    topology = app.Topology()
    chain = topology.addChain()
    for index in range(0, len(atoms), 3):
        residue = topology.addResidue("HOH", chain)
        oxygen = topology.addAtom("O", app.element.oxygen, residue)
        for name in ("H1", "H2"):
            topology.addBond(oxygen, topology.addAtom(name, app.element.hydrogen, residue))
    cell = atoms.cell.array
    topology.setPeriodicBoxVectors(cell * unit.angstrom)
    (folder / "liquid").mkdir(parents=True)
    with open(folder / "box.pdb", "w") as handle:
        app.PDBFile.writeFile(topology, atoms.positions * unit.angstrom, handle)
    system = openmm.System()  # velocities drawn for the repartitioned masses, as the protocol's
    for number in atoms.numbers:
        system.addParticle(4.0 if number == 1 else float(atomic_masses[8] - 2 * (4.0 - atomic_masses[1])))
    system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*row) * 0.1 for row in cell))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * 0.1)
    context.setVelocitiesToTemperature(temperature, 7)
    state = context.getState(getPositions=True, getVelocities=True)
    (folder / "liquid" / "checkpoint.xml").write_text(openmm.XmlSerializer.serialize(state))
    velocities = state.getVelocities(asNumpy=True).value_in_unit(unit.angstrom / unit.femtosecond)
    return atoms.positions, np.asarray(velocities)


def test_the_replica_state_is_read_with_its_units_and_the_hydrogens_repartitioned(tmp_path):
    tool = load_script(TOOL, "nve_drift")
    positions, velocities = write_replica(tmp_path)
    numbers, read_positions, read_velocities, cell, bonds = tool.replica_state(tmp_path)
    np.testing.assert_allclose(read_positions, positions, atol=1e-6)
    np.testing.assert_allclose(read_velocities, velocities, rtol=1e-12)
    assert sorted(tuple(sorted(bond)) for bond in bonds) == [(i, i + j) for i in range(0, len(numbers), 3) for j in (1, 2)]
    masses = tool.repartitioned_masses(numbers, bonds, 4.0)
    np.testing.assert_allclose(masses[numbers == 1], 4.0)
    np.testing.assert_allclose(masses[numbers == 8], atomic_masses[8] - 2 * (4.0 - atomic_masses[1]))
    assert masses.sum() == pytest.approx(atomic_masses[numbers].sum(), rel=1e-12)


def test_a_float64_nve_run_of_the_shipped_model_conserves_its_energy(tmp_path):
    """0.5 fs for 10 fs from an unequilibrated box (the kinetic energy rises by ~100 K worth):
    the total energy moves by under 2 % of what the kinetic energy moves (observed 0.6 %;
    forces in other units than the masses, or of the wrong sign, move it as much); the start
    temperature is the velocities' own, in SI units."""
    tool = load_script(TOOL, "nve_drift")
    _, velocities = write_replica(tmp_path)
    result = tool.nve_drift(str(small_water_model_path()), tmp_path, steps=20, timestep_fs=0.5, hydrogen_mass=4.0,
                            dtype="float64", compile=False, sample_every=1)
    numbers, *_, bonds = tool.replica_state(tmp_path)
    masses = tool.repartitioned_masses(numbers, bonds, 4.0) * AMU_KG
    kinetic = 0.5 * np.sum(masses[:, None] * (velocities * 1e5) ** 2)  # Å/fs = 1e5 m/s
    # ASE's constants (CODATA 2014) against SI 2019: 3e-7 apart
    assert result["temperature_start_K"] == pytest.approx(2 * kinetic / (3 * len(numbers) * BOLTZMANN), rel=1e-5)
    assert result["atoms"] == 48 and result["steps"] == 20
    kinetic_change = 1.5 * 8.617333e-2 * abs(result["temperature_mean_K"] - result["temperature_start_K"])  # meV/atom
    assert kinetic_change > 5.0  # the box is not at rest: the check below has something to compare with
    assert result["fluctuation_mev_atom"] < 0.02 * kinetic_change
    assert abs(result["drift_mev_atom_ps"]) * 0.01 < 0.02 * kinetic_change  # over the 10 fs window
