"""The OpenMM plugin in real OpenMM Contexts: TorchForce and PythonForce against the ASE
calculator, periodic images, ML/MM through openmm-ml, serialization, NVE, NPT."""

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from openmm import app, unit

from allscaip import AllScAIPCalculator
from allscaip.io import ModelFileError
from allscaip.plugins.openmm import create_allscaip_force, create_system
from allscaip.plugins.openmm.forces import EV_TO_KJ_PER_MOL, element_numbers
import nve_convergence as nve
from conftest import checkpoint_path
from openmm_helpers import smooth_model_file, water_topology

KJ_PER_EV_ANGSTROM_TO_NM = EV_TO_KJ_PER_MOL * 10.0


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return smooth_model_file(tmp_path_factory.mktemp("openmm") / "model.pt")


def evaluate(system, positions, platform="Reference", properties=None):
    context = openmm.Context(system, openmm.VerletIntegrator(0.0001),
                             openmm.Platform.getPlatformByName(platform), properties or {})
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return (state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole),
            state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))


def ase_reference(model_file, topology, positions_nm, periodic=True):
    cell = np.array(topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer)) * 10 if periodic else None
    atoms = Atoms(numbers=element_numbers(topology), positions=np.asarray(positions_nm) * 10,
                  cell=cell, pbc=periodic)
    atoms.calc = AllScAIPCalculator(model_file)
    return atoms.get_potential_energy() * EV_TO_KJ_PER_MOL, atoms.get_forces() * KJ_PER_EV_ANGSTROM_TO_NM


def pure_ml_system(model_file, topology, dtype, backend="torchforce"):
    return create_system(topology, model_file, dtype=dtype, backend=backend, remove_cm_motion=False)


@pytest.mark.parametrize("platform, dtype, backend, energy_tol, force_rtol", [
    ("Reference", "float64", "torchforce", 1e-6, 1e-6),
    ("CPU", "float64", "torchforce", 1e-6, 1e-6),
    ("CPU", "float32", "torchforce", 2.0, 1e-4),
    ("Reference", "float64", "python", 1e-6, 1e-6),
])
def test_energy_and_forces_equal_ase_calculator(model_file, platform, dtype, backend, energy_tol, force_rtol):
    topology, positions = water_topology()
    reference_energy, reference_forces = ase_reference(model_file, topology, positions.value_in_unit(unit.nanometer))
    energy, forces = evaluate(pure_ml_system(model_file, topology, dtype, backend), positions, platform)
    # energies include ~2e5 kJ/mol of element references: float32 tolerance is absolute
    assert abs(energy - reference_energy) < max(energy_tol, 1e-12 * abs(reference_energy))
    scale = np.abs(reference_forces).max()
    np.testing.assert_allclose(forces, reference_forces, rtol=force_rtol, atol=force_rtol * scale)


def test_translating_molecules_by_box_vectors_changes_nothing(model_file):
    topology, positions = water_topology()
    system = pure_ml_system(model_file, topology, "float64")
    box = np.array(topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    unwrapped = positions.value_in_unit(unit.nanometer).copy()
    unwrapped[0:3] += box[0] - 2 * box[1]
    unwrapped[9:12] += 3 * box[2]
    energy0, forces0 = evaluate(system, positions)
    energy1, forces1 = evaluate(system, unwrapped)
    assert energy1 == pytest.approx(energy0, abs=1e-6)
    np.testing.assert_allclose(forces1, forces0, atol=1e-6)


def test_xml_serialization_round_trip_keeps_the_energy(model_file):
    """PythonForce backend. (openmmtorch 1.5 from PyPI segfaults when deserializing *any*
    TorchForce, even a one-line module; see README, "Known limitation".)"""
    topology, positions = water_topology()
    system = pure_ml_system(model_file, topology, "float64", backend="python")
    restored = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    assert evaluate(restored, positions)[0] == pytest.approx(evaluate(system, positions)[0], abs=1e-8)


def test_openmm_ml_mixed_system_interpolates_between_mm_and_ml(model_file):
    """Non-periodic 6-water cluster; waters 0-2 are ML. With mechanical embedding:
    lambda=0 is the MM System, lambda=1 is ML(waters 0-2) + MM(all) - MM(waters 0-2 alone)."""
    from openmmml import MLPotential

    topology, positions = water_topology("water_box16_nopbc", n_waters=6)
    forcefield = app.ForceField("amber14/tip3pfb.xml")
    mm_kwargs = dict(nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    mm_system = forcefield.createSystem(topology, **mm_kwargs)
    ml_atoms = list(range(9))
    potential = MLPotential("allscaip", modelPath=str(model_file))
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms, interpolate=True,
                                        precision="double")
    context = openmm.Context(mixed, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)

    def energy_at(lam):
        context.setParameter("lambda_interpolate", lam)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    mm_full = evaluate(mm_system, positions)[0]
    sub_topology, sub_positions = water_topology("water_box16_nopbc", n_waters=3)
    mm_sub = evaluate(forcefield.createSystem(sub_topology, **mm_kwargs), sub_positions)[0]
    ml_sub = ase_reference(model_file, sub_topology, sub_positions.value_in_unit(unit.nanometer), periodic=False)[0]
    assert energy_at(0.0) == pytest.approx(mm_full, abs=1e-6)
    assert energy_at(1.0) == pytest.approx(ml_sub + mm_full - mm_sub, abs=1e-5)
    half = energy_at(0.5)
    assert half == pytest.approx(0.5 * (energy_at(0.0) + energy_at(1.0)), abs=1e-5)


def test_openmm_ml_device_and_block_size_reach_the_model(model_file, monkeypatch):
    """MLPotential("allscaip", ...) takes openmm-ml's ``device`` and our node-attention block."""
    from openmmml import MLPotential

    from allscaip.plugins.openmm import pythonforce

    built = []

    class Recorded(pythonforce.AllScAIPComputation):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(pythonforce, "AllScAIPComputation", Recorded)

    topology, positions = water_topology()
    potential = MLPotential("allscaip", modelPath=str(model_file))
    system = potential.createSystem(topology, backend="python", precision="double", device="cpu",
                                    nodeAttentionBlockSize=5)
    computation = built[-1]
    assert computation.device == torch.device("cpu")
    assert computation.model.backbone.block_size == 5
    dense = potential.createSystem(topology, backend="python", precision="double", nodeAttentionBlockSize=0)
    assert built[-1].model.backbone.block_size == 0
    assert evaluate(system, positions)[0] == pytest.approx(evaluate(dense, positions)[0], abs=1e-7)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda' asked for, but torch sees no GPU"):
            potential.createSystem(topology, device="cuda")
    with pytest.raises(ValueError, match="bad device 'gpu0'"):
        potential.createSystem(topology, device="gpu0")


def test_pure_ml_system_defines_molecules_for_the_barostat(model_file):
    topology, positions = water_topology()
    system = pure_ml_system(model_file, topology, "float32")
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
    assert len(context.getMolecules()) == 16


def test_npt_moves_the_volume_with_a_working_acceptance_rate(model_file):
    topology, positions = water_topology()
    system = pure_ml_system(model_file, topology, "float32")
    barostat = openmm.MonteCarloBarostat(1.0 * unit.bar, 300 * unit.kelvin, 5)
    barostat.setRandomNumberSeed(3)
    system.addForce(barostat)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.25 * unit.femtosecond)
    integrator.setRandomNumberSeed(3)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("CPU"))
    context.setPositions(positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 3)
    volumes = []
    for _ in range(40):
        integrator.step(5)
        state = context.getState()
        volumes.append(state.getPeriodicBoxVolume().value_in_unit(unit.nanometer**3))
    accepted = np.mean(np.abs(np.diff(volumes)) > 0)
    assert 0.05 < accepted < 0.95, f"barostat acceptance {accepted:.2f}"


# the negative control also runs in the default suite through ASE (test_calculator.py)
@pytest.mark.parametrize("smooth_node_order", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_nve_total_energy_fluctuation_shrinks_as_dt_squared(smooth_node_order, tmp_path):
    """OpenMM VerletIntegrator, TorchForce float64 on Reference, shipped model, 16 waters:
    the total energy's RMS fluctuation falls 4x per halved timestep (see nve_convergence);
    the negative control, fairchem's hard neighbour count, must fail the same check."""
    model = nve.shipped_model() if smooth_node_order else nve.hard_count_copy(tmp_path / "hard.pt")
    topology, _ = water_topology()
    atoms = nve.water_box()
    system = create_system(topology, model, dtype="float64", remove_cm_motion=False)

    def total_energies(timestep_fs):
        integrator = openmm.VerletIntegrator(timestep_fs * unit.femtosecond)
        context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
        context.setPositions(atoms.positions / 10.0)
        context.setVelocities(nve.ase_velocities_angstrom_per_fs(atoms) * 100.0)  # nm/ps
        every, samples = nve.run_plan(timestep_fs)
        totals = []
        for sample in range(samples + 1):
            if sample:
                integrator.step(every)
            state = context.getState(getEnergy=True)
            totals.append((state.getPotentialEnergy() + state.getKineticEnergy()).value_in_unit(
                unit.kilojoule_per_mole))
        return np.array(totals)

    ratios = nve.rmsd_ratios(total_energies)
    assert nve.is_second_order(ratios) == smooth_node_order, f"ratios {ratios}"


def test_unknown_element_missing_and_corrupt_models_are_clear_errors(model_file, tmp_path):
    topology, _ = water_topology()
    with pytest.raises(ValueError, match=r"unsupported atomic number\(s\) \[100\]"):
        create_allscaip_force(model_file, [8, 1, 100])
    with pytest.raises(ModelFileError, match="does not exist"):
        create_system(topology, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable AllScAIP model file"):
        create_system(topology, corrupt)
    with pytest.raises(ModelFileError, match="convert-fairchem"):
        create_system(topology, checkpoint_path("conserving"))


def test_works_when_openmm_is_imported_before_torch(model_file, tmp_path):
    """openmm-torch's kernels fail to load if openmm comes first; the plugin reloads them."""
    import subprocess
    import sys

    script = f"""
import openmm
from openmm import app
from openmmml import MLPotential
pdb = app.PDBFile({str(tmp_path / 'box.pdb')!r})
system = MLPotential("allscaip", modelPath={str(model_file)!r}).createSystem(pdb.topology)
context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("CPU"))
context.setPositions(pdb.positions)
print(context.getState(getEnergy=True).getPotentialEnergy())
"""
    topology, positions = water_topology()
    with open(tmp_path / "box.pdb", "w") as handle:
        app.PDBFile.writeFile(topology, positions, handle)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "kJ/mol" in result.stdout


def test_hydrogen_mass_repartitioning_keeps_the_total_mass(model_file):
    topology, _ = water_topology()
    plain = pure_ml_system(model_file, topology, "float32")
    heavy = create_system(topology, model_file, hydrogen_mass=2.0)
    masses = lambda system: np.array([system.getParticleMass(i).value_in_unit(unit.dalton)
                                      for i in range(system.getNumParticles())])
    assert masses(heavy).sum() == pytest.approx(masses(plain).sum(), rel=1e-12)
    np.testing.assert_allclose(masses(heavy)[1::3], 2.0)
    np.testing.assert_allclose(masses(heavy)[0::3], masses(plain)[0::3] - 2 * (2.0 - masses(plain)[1]))
