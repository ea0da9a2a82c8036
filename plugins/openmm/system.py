"""Building OpenMM Systems around the AllScAIP force."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from allscaip.plugins.openmm.forces import create_allscaip_force, element_numbers


def add_molecule_bonds(system, topology, atoms: Optional[Sequence[int]] = None) -> int:
    """Give OpenMM the molecules of a pure-ML System: a zero-strength HarmonicBondForce over
    the topology's bonds. Without bonds every atom is its own molecule to
    ``MonteCarloBarostat``, which then scales atom positions instead of molecule centres.
    Returns the number of bonds added."""
    import openmm

    chosen = None if atoms is None else set(atoms)
    bonds = openmm.HarmonicBondForce()
    bonds.setName("MoleculeDefinition")
    count = 0
    for bond in topology.bonds():
        i, j = bond[0].index, bond[1].index
        if chosen is None or (i in chosen and j in chosen):
            bonds.addBond(i, j, 0.1, 0.0)
            count += 1
    if count:
        system.addForce(bonds)
    return count


def repartition_hydrogen_mass(system, topology, hydrogen_mass: float) -> None:
    """Move mass (amu) from each heavy atom to its bonded hydrogens so that every hydrogen
    weighs ``hydrogen_mass``; total mass is unchanged. Allows ~2x longer time steps."""
    from openmm import unit

    from openmm.app import element

    for bond in topology.bonds():
        a, b = bond
        if a.element is element.hydrogen and b.element is not element.hydrogen:
            a, b = b, a
        if b.element is not element.hydrogen or a.element is element.hydrogen:
            continue
        heavy_mass = system.getParticleMass(a.index).value_in_unit(unit.dalton)
        light_mass = system.getParticleMass(b.index).value_in_unit(unit.dalton)
        shift = hydrogen_mass - light_mass
        if heavy_mass - shift <= 0:
            raise ValueError(f"hydrogen mass {hydrogen_mass} amu leaves atom {a.index} without mass")
        system.setParticleMass(b.index, hydrogen_mass)
        system.setParticleMass(a.index, heavy_mass - shift)


def create_system(topology, model: str | Path, *, charge: int = 0, spin: int = 1,
                  dtype: str = "float32", backend: str = "torchforce",
                  hydrogen_mass: Optional[float] = None, remove_cm_motion: bool = True,
                  compile: bool = False):
    """A pure-ML System for ``topology``: masses, the AllScAIP force (periodic when the
    topology has a box), molecule definitions from bonds, optional HMR. ``compile``: the
    ``python`` backend through ``torch.compile`` (``allscaip.compiled``)."""
    import openmm

    system = openmm.System()
    box = topology.getPeriodicBoxVectors()
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*box)
    for atom in topology.atoms():
        system.addParticle(0.0 if atom.element is None else atom.element.mass)
    numbers = element_numbers(topology)
    system.addForce(create_allscaip_force(model, numbers, charge=charge, spin=spin,
                                          periodic=box is not None, dtype=dtype, backend=backend,
                                          compile=compile))
    add_molecule_bonds(system, topology)
    if hydrogen_mass is not None:
        repartition_hydrogen_mass(system, topology, hydrogen_mass)
    if remove_cm_motion:
        system.addForce(openmm.CMMotionRemover())
    return system
