"""A short-range repulsive wall between element pairs, added to the network's energy.

A network knows nothing below the shortest distances of its training data, and where it has
no repulsion there molecules can fall into each other (SPC/Fw-trained water models: two
oxygens settle 1.0 Å apart, ``allscaip.plugins.contacts``). The wall is

    E = sum over pairs i < j of k_ab (r0_ab - r_ij)^3  for r_ij < r0_ab,  else 0,

zero with zero force and curvature at the onset r0, so a wall whose onsets lie below the
training data's shortest distances leaves every training frame's energy, forces and stress
exactly unchanged. ``ModelConfig.repulsion`` lists [Z_a, Z_b, r0 (Å), k (eV/Å^3)] entries.
"""

from typing import List, Tuple

import torch

from allscaip.graph import (CellPlan, find_candidates, find_candidates_minimum_image, lattice_images,
                            safe_norm)


def repulsion_tables(entries: List[List[float]], n_elements: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (n_elements, n_elements) onset and strength tables of the config entries."""
    onset = torch.zeros(n_elements, n_elements, dtype=torch.float64)
    strength = torch.zeros(n_elements, n_elements, dtype=torch.float64)
    for z_a, z_b, r0, k in entries:
        for a, b in ((int(z_a), int(z_b)), (int(z_b), int(z_a))):
            onset[a, b], strength[a, b] = float(r0), float(k)
    return onset, strength


def repulsion_energy(positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                     pbc: torch.Tensor, plan: CellPlan, onset: torch.Tensor, strength: torch.Tensor,
                     radius: float) -> torch.Tensor:
    """The wall's energy (eV, positions' dtype), differentiable in positions and cell.
    ``radius``: the largest onset (pairs are searched within it); ``plan``: the model's cell
    plan, whose image range covers the model's cutoff and so any shorter radius."""
    images = lattice_images(plan.reps, cell.detach())
    offsets = images @ cell
    if plan.wide:
        src, dst, img = find_candidates_minimum_image(positions.detach(), cell.detach(), pbc, radius, plan.reps)
    else:
        src, dst, img = find_candidates(positions.detach(), offsets.detach(), radius)
    disp = (torch.index_select(positions, 0, dst) + torch.index_select(offsets, 0, img)
            - torch.index_select(positions, 0, src))
    distance = safe_norm(disp)
    a = torch.index_select(atomic_numbers, 0, src)
    b = torch.index_select(atomic_numbers, 0, dst)
    gap = (onset.to(distance.dtype)[a, b] - distance).clamp_min(0.0)
    pair = strength.to(distance.dtype)[a, b] * gap * gap * gap
    # each pair is found from both ends; an atom and itself (distance 0) is not a pair
    return 0.5 * torch.where(distance > 0.0, pair, torch.zeros_like(pair)).sum()
