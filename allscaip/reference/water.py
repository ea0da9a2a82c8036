"""Starting structures of water: periodic boxes on a grid with random orientations, and
single SPC/Fw molecules at their equilibrium geometry (Angstrom)."""

from __future__ import annotations

import math

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

from allscaip.reference import spcfw

WATER_MASS = 18.015  # g/mol
AVOGADRO = 6.02214076e23


def spcfw_geometry() -> np.ndarray:
    """O, H, H positions (Angstrom) of SPC/Fw's equilibrium geometry, O at the origin."""
    r, theta = spcfw.BOND_LENGTH * 10, spcfw.ANGLE
    return np.array([[0.0, 0.0, 0.0], [r, 0.0, 0.0], [r * math.cos(theta), r * math.sin(theta), 0.0]])


def box_length(n_molecules: int, density: float) -> float:
    """Edge (Angstrom) of a cubic box holding ``n_molecules`` waters at ``density`` g/cm^3."""
    return (n_molecules * WATER_MASS / (density * AVOGADRO) * 1e24) ** (1.0 / 3.0)


def water_box(n_molecules: int, density: float = 0.997, seed: int = 0) -> Atoms:
    """Periodic cubic box of ``n_molecules`` waters at ``density`` g/cm^3: molecules on a
    cubic grid in random orientations (no overlaps; not equilibrated), ordered O, H, H."""
    length = box_length(n_molecules, density)
    per_side = int(np.ceil(n_molecules ** (1.0 / 3.0)))
    spacing = length / per_side
    rng = np.random.default_rng(seed)
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side)
                      for k in range(per_side)], dtype=float)
    sites = sites[rng.permutation(len(sites))[:n_molecules]] * spacing + 0.25 * spacing
    rotations = Rotation.random(n_molecules, random_state=seed).as_matrix()
    geometry = spcfw_geometry()
    positions = np.concatenate([site + geometry @ rot.T for site, rot in zip(sites, rotations)])
    return Atoms("OH2" * n_molecules, positions=positions, cell=[length] * 3, pbc=True)
