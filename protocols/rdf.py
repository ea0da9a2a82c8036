"""Radial distribution function of molecular sites from a liquid trajectory (MDAnalysis).

Site: the single heavy atom of molecules that have one (O for water: the O-O RDF), else
the molecule's centre of mass. Molecules are made whole by the minimum image before their
centres are taken, so wrapped and unwrapped trajectories give the same result."""

from __future__ import annotations

import warnings

import numpy as np

MAX_FRAMES = 200
BIN_WIDTH = 0.1  # Angstrom


def site_label(universe) -> str:
    residue = universe.residues[0]
    heavy = [a for a in residue.atoms if a.element != "H"]
    return f"{heavy[0].element}-{heavy[0].element}" if len(heavy) == 1 else "centre of mass"


def site_groups(universe) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per molecule: the atom indices defining its site and their weights."""
    groups = []
    for residue in universe.residues:
        heavy = [a.index for a in residue.atoms if a.element != "H"]
        if len(heavy) == 1:
            groups.append((np.array(heavy), np.ones(1)))
        else:
            groups.append((residue.atoms.indices, residue.atoms.masses / residue.atoms.masses.sum()))
    return groups


def sites(positions: np.ndarray, groups, box_lengths: np.ndarray) -> np.ndarray:
    """Site position of every molecule (Angstrom), molecules made whole first."""
    out = np.empty((len(groups), 3))
    for k, (indices, weights) in enumerate(groups):
        atoms = positions[indices]
        delta = atoms - atoms[0]
        delta -= box_lengths * np.round(delta / box_lengths)
        out[k] = atoms[0] + weights @ delta
    return out


def radial_distribution(topology_pdb: str, trajectory: str, start_frame: int = 0,
                        r_max: float = 10.0) -> dict:
    """g(r) averaged over frames from ``start_frame`` (at most MAX_FRAMES, evenly spaced)."""
    import MDAnalysis as mda
    from MDAnalysis.lib.distances import self_distance_array

    with warnings.catch_warnings():  # MDAnalysis 2.x announces a 3.0 DCD-reader change
        warnings.simplefilter("ignore", DeprecationWarning)
        return _rdf(mda.Universe(topology_pdb, trajectory), self_distance_array, start_frame, r_max)


def _rdf(universe, self_distance_array, start_frame: int, r_max: float) -> dict:
    n_frames = len(universe.trajectory)
    if start_frame >= n_frames:
        raise ValueError(f"no trajectory frames after frame {start_frame}")
    stride = max(1, (n_frames - start_frame) // MAX_FRAMES)
    frames = range(start_frame, n_frames, stride)
    first_box = universe.trajectory[start_frame].dimensions[:3]
    r_max = min(r_max, 0.5 * float(min(first_box)))
    edges = np.arange(0.0, r_max + BIN_WIDTH, BIN_WIDTH)
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    g = np.zeros(len(edges) - 1)
    groups = site_groups(universe)
    used = 0
    for frame in frames:
        timestep = universe.trajectory[frame]
        lengths = timestep.dimensions[:3]
        if 0.5 * min(lengths) < r_max:
            continue
        points = sites(timestep.positions, groups, lengths)
        n = len(points)
        distances = self_distance_array(points, box=timestep.dimensions)
        counts, _ = np.histogram(distances, bins=edges)
        pair_density = n * (n - 1) / 2 / float(np.prod(lengths))
        g += counts / (pair_density * shell)
        used += 1
    if used == 0:
        raise ValueError("every frame's box is smaller than twice the RDF range")
    return {"r_angstrom": (0.5 * (edges[1:] + edges[:-1])).tolist(), "g": (g / used).tolist(),
            "site": site_label(universe), "frames": used}
