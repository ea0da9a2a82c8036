"""The ASE calculator on the golden structures, and its input validation."""

import numpy as np
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.verlet import VelocityVerlet
from ase import units

from allscaip import AllScAIPCalculator
import nve_convergence as nve
from conftest import fresh_model, golden_outputs, golden_structures, to_atoms


def structure(name):
    return next(s for s in golden_structures() if s["name"] == name)


@pytest.fixture(scope="module")
def calculator():
    return AllScAIPCalculator(model=fresh_model("conserving"))


@pytest.mark.parametrize("name", ["water_cation_doublet", "triclinic_methanol_water", "slab_water_nacl_ttf"])
def test_calculator_matches_fairchem(calculator, name):
    atoms = to_atoms(structure(name))
    atoms.calc = calculator
    reference = golden_outputs("conserving")[name]
    assert atoms.get_potential_energy() == pytest.approx(reference["energy_fp64_eps32"], abs=2e-5)
    np.testing.assert_allclose(atoms.get_forces(), reference["forces_fp64_eps32"], atol=2e-5)
    if atoms.pbc.any():
        np.testing.assert_allclose(atoms.get_stress(), reference["stress_voigt_fp64_eps32"], atol=2e-7)


def test_default_charge_and_spin_are_neutral_singlet(calculator):
    atoms = to_atoms(structure("water"))
    atoms.calc = calculator
    explicit = atoms.get_potential_energy()
    del atoms.info["charge"], atoms.info["spin"]
    atoms.calc = calculator
    assert atoms.get_potential_energy() == explicit


def test_stress_of_a_molecule_is_not_defined(calculator):
    atoms = to_atoms(structure("water"))
    atoms.calc = calculator
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


@pytest.mark.parametrize("key, value, error", [("charge", 0.5, TypeError), ("spin", 200, ValueError)])
def test_bad_charge_or_spin_is_a_clear_error(calculator, key, value, error):
    atoms = to_atoms(structure("water"))
    atoms.info[key] = value
    atoms.calc = calculator
    with pytest.raises(error, match=key):
        atoms.get_potential_energy()


@pytest.mark.parametrize("smooth_node_order", [True, False])
def test_nve_total_energy_fluctuation_shrinks_as_dt_squared(smooth_node_order, tmp_path):
    """ASE velocity Verlet, shipped model, float64, 16 waters, 10 fs at 0.5/0.25/0.125 fs.

    With the envelope-weighted order parameter the energy is smooth and the fluctuation
    ratios are 4; with fairchem's hard neighbour count (exact fairchem parity) the energy
    jumps when an edge enters or leaves the graph and the ratios collapse towards 1."""
    model = nve.shipped_model() if smooth_node_order else nve.hard_count_copy(tmp_path / "hard.pt")
    calculator = AllScAIPCalculator(model, dtype="float64")

    def total_energies(timestep_fs):
        atoms = nve.water_box()
        atoms.calc = calculator
        dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
        every, samples = nve.run_plan(timestep_fs)
        totals = [atoms.get_total_energy()]
        for _ in range(samples):
            dynamics.run(every)
            totals.append(atoms.get_total_energy())
        return np.array(totals)

    ratios = nve.rmsd_ratios(total_energies)
    assert nve.is_second_order(ratios) == smooth_node_order, f"ratios {ratios}"
