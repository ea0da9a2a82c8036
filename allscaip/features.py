"""Geometric features of the neighbour graph: distance and direction expansions,
bond-orientational order and the sinc kernels of node attention."""

from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch


def unit_vectors(disp: torch.Tensor) -> torch.Tensor:
    """disp / |disp| over the last axis; the zero vector stays zero (zero gradient)."""
    squared = disp.square().sum(dim=-1, keepdim=True)
    norm = squared.clamp_min(1e-12).sqrt()
    return torch.where(squared <= 1e-12, torch.zeros_like(disp), disp / norm)


def gaussian_offsets(cutoff: float, size: int) -> torch.Tensor:
    """Gaussian centres on [0, cutoff], float32 like the reference model's.

    Computed in Python floats and rounded once: float32 ``torch.linspace`` rounds differently on
    CPUs with and without AVX-512 (35 of 512 centres moved by an ulp), which changed the
    model's function between machines by 1e-7 relative."""
    centres = [cutoff * index / (size - 1) for index in range(size)] if size > 1 else [0.0]
    return torch.tensor(centres, dtype=torch.float64).to(torch.float32)


def gaussian_grid(offsets: torch.Tensor) -> Tuple[float, float]:
    """First centre and spacing of evenly spaced Gaussian centres, as Python floats."""
    return float(offsets[0].item()), float(offsets[1].item() - offsets[0].item())


def gaussian_window(distance: torch.Tensor, offsets: torch.Tensor, half_width: int = 20,
                    grid: Optional[Tuple[float, float]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gaussians exp(-(d - mu)^2 / (2 (2 delta)^2)) (delta = centre spacing), evaluated only
    for the 2*half_width+1 centres nearest to each distance.

    A centre k spacings away contributes exp(-k^2/8); beyond 20 spacings that is below
    2e-22 of the largest term, so dropping it is exact in float64. Returns the centre
    indices (E, 2w+1) and values (E, 2w+1); out-of-range centres get value 0. ``grid`` =
    ``gaussian_grid(offsets)`` given in advance saves two host syncs.
    """
    first, spacing = gaussian_grid(offsets) if grid is None else grid
    coefficient = -0.5 / (2.0 * spacing) ** 2
    n_centres = offsets.shape[0]
    with torch.no_grad():
        nearest = torch.round((distance - first) / spacing).to(torch.long)
        window = nearest.unsqueeze(-1) + torch.arange(-half_width, half_width + 1, device=distance.device)
        inside = (window >= 0) & (window < n_centres)
        window = window.clamp(0, n_centres - 1)
    centres = offsets.to(distance.dtype)[window]
    values = torch.exp(coefficient * (distance.unsqueeze(-1) - centres).square())
    return window, torch.where(inside, values, torch.zeros_like(values))


def degree_of_component(lmax: int, device: torch.device) -> torch.Tensor:
    """l of each of the (lmax+1)^2 harmonic components."""
    degrees: List[int] = []
    for l in range(lmax + 1):
        degrees += [l] * (2 * l + 1)
    return torch.tensor(degrees, dtype=torch.long, device=device)


def bond_orientational_order(harmonics: torch.Tensor, weight: torch.Tensor, center: torch.Tensor,
                             n_atoms: int, lmax: int) -> torch.Tensor:
    """Steinhardt-like order per atom: (N, lmax+1).

    harmonics: (E, >=(lmax+1)^2) of each edge direction (the atom's own edge has the
    zero direction); weight: (E,) weight of each edge in its centre's average (fairchem: 1
    for every kept edge, the atom's own included); center: (E,) centre atom. Harmonics are
    scaled by 1/sqrt(2l+1), averaged, then sqrt(sum_m mean^2) per l, clamped at 1e-6.
    """
    degree = degree_of_component(lmax, harmonics.device)
    scaled = harmonics[:, :degree.shape[0]] / torch.sqrt(2.0 * degree + 1.0).to(harmonics.dtype)
    width = degree.shape[0]
    sums = torch.zeros((n_atoms, width + 1), dtype=harmonics.dtype, device=harmonics.device)  # [total, count]
    sums = sums.index_add(0, center, torch.cat([scaled, torch.ones_like(weight).unsqueeze(-1)], dim=-1)
                          * weight.unsqueeze(-1))
    mean = sums[:, :width] / sums[:, width:].clamp_min(1.0)
    per_degree = torch.zeros((n_atoms, lmax + 1), dtype=mean.dtype, device=mean.device)
    per_degree = per_degree.index_add(1, degree, mean.square())
    return per_degree.clamp_min(1e-6).sqrt()


def sinc_frequencies(count: int, r_min: float = 0.25, r_max: float = 30.0) -> torch.Tensor:
    """Angular frequencies log-spaced from pi/(4 r_max) to pi/r_min, float32 like the
    reference's (computed in Python floats and rounded once: the same on every CPU)."""
    low, high = math.log10(math.pi / (4.0 * r_max)), math.log10(math.pi / r_min)
    exponents = [low + (high - low) * index / (count - 1) for index in range(count)] if count > 1 else [low]
    return torch.tensor([10.0 ** e for e in exponents], dtype=torch.float64).to(torch.float32)


def sine_kernels(distance: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """sin(d w) / d for all pairs and frequencies: (N, N) -> (N, N, K); the sinc kernels of node
    attention are these divided by w, a factor folded into the radial weights (``radial_weight /
    omega``), which saves two passes over the (N, N, K) tensor in each direction.

    The atom's own pair (d = 0) is evaluated at d = 1e-8 A, where sin(d w)/d equals the limit w
    to 1e-15 relative and every derivative stays finite (force training differentiates twice;
    the own pair's distance has zero gradient anyway).
    """
    own = distance == 0.0
    safe = torch.where(own, torch.full_like(distance, 1e-8), distance)
    return torch.sin(safe.unsqueeze(-1) * omega.to(distance.dtype)) * safe.reciprocal().unsqueeze(-1)


def node_attention_bias(sines: torch.Tensor, omega: torch.Tensor, radial_weight: torch.Tensor,
                        index: torch.Tensor, n_atoms: int, eps: float = 1e-6) -> torch.Tensor:
    """Per-head additive bias log(N^2 w_ij / sum_ij w_ij), w = softplus(sines . radial_weight) + eps,
    from the kernels of the pairs i < j only (the bias is symmetric).

    sines: (..., N (N - 1) / 2, K) ``sine_kernels`` of ``graph.pair_distances``; the diagonal
    (an atom and itself, d = 0) has kernels sin(w d)/d -> omega (K,). radial_weight: (heads, K),
    already divided by the frequencies (so that sines . radial_weight is fairchem's
    sinc . weight); index: ``graph.pair_matrix_index(N)``. Returns (..., heads, N, N).
    """
    softplus = torch.nn.functional.softplus
    # heads ahead of pairs, so that every pass (and the backward scatter) runs along the pairs
    weight = softplus(torch.matmul(radial_weight, sines.transpose(-1, -2))) + eps  # (..., heads, M)
    own = softplus(torch.matmul(radial_weight, omega.to(sines.dtype))) + eps  # (heads,)
    total = 2.0 * weight.sum(dim=-1) + n_atoms * own  # (..., heads)
    scale = (float(n_atoms * n_atoms) / total.clamp_min(eps)).unsqueeze(-1)
    values = torch.cat([torch.log(weight * scale), torch.log(own.unsqueeze(-1) * scale).expand(
        list(weight.shape[:-1]) + [n_atoms])], dim=-1)  # (..., heads, M + N)
    matrix = torch.index_select(values, values.dim() - 1, index)  # (..., heads, N * N)
    return matrix.reshape(list(values.shape[:-1]) + [n_atoms, n_atoms])


def node_attention_log_weight(sines: torch.Tensor, radial_weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log w for a block of query rows: (B, N, K) -> (heads, B, N).

    It differs from ``node_attention_bias`` by the per-head constant log(N^2 / sum w), which
    the softmax over keys removes, so it needs no pass over all pairs first.
    """
    weight = torch.nn.functional.softplus(torch.einsum("ijk,hk->hij", sines, radial_weight)) + eps
    return torch.log(weight)
