"""SPC/Fw reference potential: OpenMM energies equal hand-computed terms of the published model."""

import math

import numpy as np
import openmm
import pytest
from openmm import unit

from allscaip.reference import spcfw
from openmm_helpers import water_topology

COULOMB = 138.935456  # kJ mol^-1 nm e^-2


def hand_energy(positions):
    """Bond, angle and intermolecular Coulomb + O-O Lennard-Jones of a set of waters (nm)."""
    molecules = positions.reshape(-1, 3, 3)
    bond = angle = 0.0
    for oxygen, h1, h2 in molecules:
        for hydrogen in (h1, h2):
            bond += 0.5 * spcfw.BOND_K * (np.linalg.norm(hydrogen - oxygen) - spcfw.BOND_LENGTH) ** 2
        u, v = h1 - oxygen, h2 - oxygen
        theta = math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v))
        angle += 0.5 * spcfw.ANGLE_K * (theta - spcfw.ANGLE) ** 2
    charges = np.array([spcfw.CHARGE_O, spcfw.CHARGE_H, spcfw.CHARGE_H])
    nonbonded = 0.0
    for a in range(len(molecules)):
        for b in range(a + 1, len(molecules)):
            for i in range(3):
                for j in range(3):
                    nonbonded += COULOMB * charges[i] * charges[j] / np.linalg.norm(molecules[a][i] - molecules[b][j])
            r = np.linalg.norm(molecules[a][0] - molecules[b][0])
            nonbonded += 4 * spcfw.EPSILON_O * ((spcfw.SIGMA_O / r) ** 12 - (spcfw.SIGMA_O / r) ** 6)
    return bond, angle, nonbonded


def test_openmm_terms_equal_hand_computed_spcfw():
    topology, positions = water_topology("water_box16_nopbc", n_waters=4)
    system = spcfw.spcfw_system(topology)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    terms = [context.getState(getEnergy=True, groups={g}).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
             for g in range(3)]
    expected = hand_energy(positions.value_in_unit(unit.nanometer))
    np.testing.assert_allclose(terms, expected, rtol=1e-8)  # OpenMM uses Coulomb 138.9354576
    assert abs(expected[2]) > 1.0  # the molecules interact


def test_non_water_residue_is_a_clear_error():
    from openmm import app

    topology = app.Topology()
    residue = topology.addResidue("MET", topology.addChain())
    for element in (app.element.carbon, app.element.hydrogen, app.element.hydrogen):
        topology.addAtom(element.symbol, element, residue)
    with pytest.raises(ValueError, match="not a water"):
        spcfw.spcfw_system(topology)


def test_openmm_and_lammps_references_agree_on_a_periodic_box():
    """64 waters, PME (OpenMM, tolerance 1e-6) vs Ewald (LAMMPS, 1e-8), 6 A cutoff + tail correction.

    Forces agree to 1e-6 of their RMS; energies differ by a configuration-independent constant
    (-0.56 kJ/mol here, from the engines' long-range dispersion conventions), so energy
    differences between frames agree tightly."""
    from openmm import app

    from allscaip.reference.spcfw_lammps import spcfw_lammps_labels

    pdb = app.PDBFile("plugins/openmm/examples/water64.pdb")
    system = spcfw.spcfw_system(pdb.topology, cutoff=0.6)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.angstrom))
    start = np.array(pdb.positions.value_in_unit(unit.angstrom))
    moved = start.copy()
    moved[:3] += [0.3, -0.2, 0.1]
    offsets = []
    for positions in (start, moved):
        context.setPositions(positions / 10)
        state = context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        lammps_energy, lammps_forces, virial = spcfw_lammps_labels(positions, box)
        force_rms = np.sqrt(np.mean(forces**2))
        assert np.sqrt(np.mean((lammps_forces - forces) ** 2)) < 1e-5 * force_rms
        assert np.allclose(virial, virial.T)
        offsets.append(lammps_energy - energy)
    assert abs(offsets[0]) < 1.0
    assert offsets[1] == pytest.approx(offsets[0], abs=1e-3)


def test_lammps_virial_equals_strain_derivative_of_the_openmm_energy():
    """W_ab = sum_i r_ia f_ib = -dE/dF_ab for the deformation r -> r F (F lower triangular,
    which keeps OpenMM's reduced box); PME tolerance 1e-8, central differences.

    Shear components agree exactly. The diagonal ones differ by one isotropic constant:
    LAMMPS's tail virial (pair_modify tail) is not the strain derivative of OpenMM's
    dispersion-correction energy (+52.4 kJ/mol here). Labels must use one convention."""
    from openmm import app

    from allscaip.reference.spcfw_lammps import spcfw_lammps_labels

    pdb = app.PDBFile("plugins/openmm/examples/water64.pdb")
    system = spcfw.spcfw_system(pdb.topology, cutoff=0.6, ewald_tolerance=1e-8)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    box = np.array(pdb.topology.getPeriodicBoxVectors().value_in_unit(unit.nanometer))
    positions = np.array(pdb.positions.value_in_unit(unit.nanometer))
    _, _, virial = spcfw_lammps_labels(positions * 10, box * 10)

    def energy(deformation):
        context.setPeriodicBoxVectors(*(box @ deformation))
        context.setPositions(positions @ deformation)
        return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)

    step = 1e-4
    difference = {}
    for a, b in [(0, 0), (1, 1), (2, 2), (1, 0), (2, 0), (2, 1)]:
        bump = np.zeros((3, 3))
        bump[a, b] = step
        numeric = -(energy(np.eye(3) + bump) - energy(np.eye(3) - bump)) / (2 * step)
        difference[a, b] = numeric - virial[a, b]
    for shear in [(1, 0), (2, 0), (2, 1)]:
        assert abs(difference[shear]) < 0.05  # kJ/mol, on shear virials of 80-520 kJ/mol
    isotropic = difference[0, 0]
    assert 10 < isotropic < 100
    assert difference[1, 1] == pytest.approx(isotropic, abs=0.1)
    assert difference[2, 2] == pytest.approx(isotropic, abs=0.1)
