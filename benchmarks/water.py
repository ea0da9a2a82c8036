"""Liquid-water boxes for benchmarks: molecules on a cubic grid, random orientations,
at a chosen density (no overlaps; not equilibrated)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

WATER_MASS = 18.015  # g/mol
AVOGADRO = 6.02214076e23
WATER_GEOMETRY = np.array([[0.0, 0.0, 0.0], [0.9572, 0.0, 0.0], [-0.2400, 0.9266, 0.0]])  # O, H, H


def water_box(n_molecules: int, density: float = 0.997, seed: int = 0) -> Atoms:
    """Periodic cubic box of ``n_molecules`` waters at ``density`` g/cm^3."""
    volume = n_molecules * WATER_MASS / (density * AVOGADRO) * 1e24  # Angstrom^3
    length = volume ** (1.0 / 3.0)
    per_side = int(np.ceil(n_molecules ** (1.0 / 3.0)))
    spacing = length / per_side
    rng = np.random.default_rng(seed)
    sites = np.array([(i, j, k) for i in range(per_side) for j in range(per_side)
                      for k in range(per_side)], dtype=float)
    sites = sites[rng.permutation(len(sites))[:n_molecules]] * spacing + 0.25 * spacing
    rotations = Rotation.random(n_molecules, random_state=seed).as_matrix()
    positions = np.concatenate([site + WATER_GEOMETRY @ rot.T for site, rot in zip(sites, rotations)])
    return Atoms("OH2" * n_molecules, positions=positions, cell=[length] * 3, pbc=True)
