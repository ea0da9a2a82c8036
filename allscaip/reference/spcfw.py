"""Flexible SPC/Fw water (Wu, Tepper & Voth, J. Chem. Phys. 124, 024503 (2006)) as an OpenMM
System: harmonic O-H bonds and H-O-H angle, point charges on all atoms, Lennard-Jones on O,
intramolecular pairs excluded. With PME it has genuine long-range electrostatics.

Parameters in OpenMM units (E = k/2 (x - x0)^2 convention for bonds and angles).
"""

from __future__ import annotations

import math

CHARGE_O, CHARGE_H = -0.82, 0.41  # e
SIGMA_O = 0.3165492  # nm
EPSILON_O = 0.6502995  # kJ/mol (0.1554253 kcal/mol)
BOND_LENGTH = 0.1012  # nm
BOND_K = 443153.38  # kJ/mol/nm^2 (1059.162 kcal/mol/A^2)
ANGLE = math.radians(113.24)  # rad
ANGLE_K = 317.5656  # kJ/mol/rad^2 (75.90 kcal/mol/rad^2)


def water_molecules(topology) -> list[tuple[int, int, int]]:
    """(O, H, H) atom indices of every residue; other residues are an error."""
    molecules = []
    for residue in topology.residues():
        atoms = list(residue.atoms())
        symbols = [atom.element.symbol if atom.element is not None else "?" for atom in atoms]
        if sorted(symbols) != ["H", "H", "O"]:
            raise ValueError(f"residue {residue.name} {residue.index} is not a water (atoms {symbols}); "
                             "SPC/Fw describes water only")
        oxygen = atoms[symbols.index("O")]
        hydrogens = [atom for atom in atoms if atom.element.symbol == "H"]
        molecules.append((oxygen.index, hydrogens[0].index, hydrogens[1].index))
    return molecules


def spcfw_system(topology, periodic: bool | None = None, cutoff: float = 0.9,
                 ewald_tolerance: float = 1e-6, dispersion_correction: bool = True):
    """OpenMM System of SPC/Fw water for ``topology`` (nm, kJ/mol).

    Periodic topologies (or periodic=True) use PME with the given real-space cutoff (nm) and
    the LJ dispersion correction; otherwise all pairs interact without cutoff. Force groups:
    0 bonds, 1 angles, 2 nonbonded.
    """
    import openmm

    periodic = topology.getPeriodicBoxVectors() is not None if periodic is None else periodic
    system = openmm.System()
    if periodic:
        system.setDefaultPeriodicBoxVectors(*topology.getPeriodicBoxVectors())
    for atom in topology.atoms():
        system.addParticle(atom.element.mass)
    bonds, angles = openmm.HarmonicBondForce(), openmm.HarmonicAngleForce()
    nonbonded = openmm.NonbondedForce()
    for atom in topology.atoms():
        is_oxygen = atom.element.symbol == "O"
        nonbonded.addParticle(CHARGE_O if is_oxygen else CHARGE_H, SIGMA_O if is_oxygen else 1.0,
                              EPSILON_O if is_oxygen else 0.0)
    for oxygen, h1, h2 in water_molecules(topology):
        bonds.addBond(oxygen, h1, BOND_LENGTH, BOND_K)
        bonds.addBond(oxygen, h2, BOND_LENGTH, BOND_K)
        angles.addAngle(h1, oxygen, h2, ANGLE, ANGLE_K)
        for i, j in ((oxygen, h1), (oxygen, h2), (h1, h2)):
            nonbonded.addException(i, j, 0.0, 1.0, 0.0)
    if periodic:
        nonbonded.setNonbondedMethod(openmm.NonbondedForce.PME)
        nonbonded.setCutoffDistance(cutoff)
        nonbonded.setEwaldErrorTolerance(ewald_tolerance)
        nonbonded.setUseDispersionCorrection(dispersion_correction)
    else:
        nonbonded.setNonbondedMethod(openmm.NonbondedForce.NoCutoff)
    for group, force in enumerate((bonds, angles, nonbonded)):
        force.setForceGroup(group)
        system.addForce(force)
    return system
