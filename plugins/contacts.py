"""Collapsed molecules: atoms of different molecules closer than their covalent radii.

A machine-learned potential knows nothing below the shortest distances of its training data.
Where it has no repulsion there, two molecules can fall into each other (two water oxygens
1.0 Å apart) and stay: energies stay finite and temperatures normal, so only geometry shows
it. In a non-reactive liquid no two atoms of different molecules come closer than the sum of
their covalent radii (SPC/Fw water data: O-O >= 2.4 Å, O-H >= 1.3 Å, against sums of 1.32
and 0.97 Å), so a closer pair means the potential has failed.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np


class Contact(NamedTuple):
    """The closest pair of atoms from different molecules, relative to their covalent radii."""

    ratio: float  # distance / (sum of covalent radii)
    first: int
    second: int
    distance: float  # Angstrom


def molecule_labels(topology) -> Optional[np.ndarray]:
    """Molecule index of each atom (connected components of the topology's bonds); None when
    the topology has no bonds (then molecules are unknown and nothing is checked)."""
    parent = list(range(topology.getNumAtoms()))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    bonded = False
    for bond in topology.bonds():
        parent[root(bond[0].index)] = root(bond[1].index)
        bonded = True
    return np.array([root(i) for i in range(len(parent))]) if bonded else None


def covalent_radii(topology) -> np.ndarray:
    from ase.data import covalent_radii as table

    return np.array([table[atom.element.atomic_number] if atom.element is not None else 0.0
                     for atom in topology.atoms()])


def closest_contact(positions: np.ndarray, cell: Optional[np.ndarray], molecules: np.ndarray,
                    radii: np.ndarray, block: int = 512) -> Contact:
    """The intermolecular pair with the smallest distance / (r_cov,i + r_cov,j); positions and
    cell (rows, or None without a box) in Angstrom; minimum images in periodic cells."""
    inverse = np.linalg.inv(cell) if cell is not None else None
    best = Contact(np.inf, -1, -1, np.inf)
    for start in range(0, len(positions), block):
        stop = min(start + block, len(positions))
        separation = positions[None, :, :] - positions[start:stop, None, :]
        if inverse is not None:
            fractional = separation @ inverse
            separation = (fractional - np.round(fractional)) @ cell
        distance = np.linalg.norm(separation, axis=-1)
        ratio = distance / (radii[start:stop, None] + radii[None, :] + 1e-12)
        ratio[molecules[start:stop, None] == molecules[None, :]] = np.inf
        row, column = np.unravel_index(np.argmin(ratio), ratio.shape)
        if ratio[row, column] < best.ratio:
            best = Contact(float(ratio[row, column]), start + int(row), int(column), float(distance[row, column]))
    return best


def collapse_message(contact: Contact, topology) -> str:
    atoms = list(topology.atoms())
    first, second = atoms[contact.first], atoms[contact.second]
    return (f"atoms {contact.first} ({first.element.symbol}) and {contact.second} ({second.element.symbol}) of "
            f"different molecules are {contact.distance:.2f} Å apart, closer than their covalent radii "
            f"({contact.distance / contact.ratio:.2f} Å): molecules have collapsed into each other. The "
            "potential has no repulsion at this range (outside its training data), so the run is not "
            "physical: use a model trained on (or with a repulsive prior at) such distances, or a "
            "starting structure without close contacts")
