"""Soft bi-directional k-nearest-neighbour graph with envelope (fairchem's "BiKNN").

For a source atom i every candidate (j, image m) at distance d gets a soft rank
    rank = sum_b bump((d - d_b) / s)
over the k + delta nearest candidates b of i (itself at d = 0 included); candidates
beyond the k + delta nearest get rank infinity. The destination rank of the edge is the
same quantity seen from j. The edge's envelope coordinate is
    env = t * logsumexp([rank_src / k, rank_dst / k, d / cutoff] / t),   env(self) = 0,
and edges with env < 1 are kept; attention biases are -env^2 / (1 - env^2).

Speed without changing the result: bump((d_a - d_b)/s) is 0 once d_b > d_a + 4 s, and
kept edges have d < cutoff, so only candidates within cutoff + 4 s can contribute. We
select those first (no autograd), rank only each atom's k + delta nearest, and read the
destination rank of i -> (j, m) as the source rank of j -> (i, -m) (same distance).
The image set is fairchem's: ceil(cutoff / plane spacing) cells along each periodic axis.

The general builder's sizes depend on the data (host syncs). For compiled calls two builders
give the same graph in fixed shapes: ``molecule_graph`` (no box, at most k + delta atoms) and
``wide_cell_graph`` (cells wider than twice the search radius).
"""

from typing import List, NamedTuple, Optional, Tuple

import torch


class NeighborGraph(NamedTuple):
    """The kept edges of one system and their padded layouts (N atoms, P slots per atom;
    slot 0 of every atom is the atom itself).

    edge_center: (E,) source atom i of each edge (edges are i -> (j, image))
    edge_slot:   (E,) flat index i*P + slot of each edge in the source layout
    edge_disp:   (E, 3) r_j + image - r_i, Angstrom
    edge_env:    (E,) envelope coordinate in [0, 1)
    src_env:     (N, P) envelope coordinate in the source layout, +inf in empty slots
    dst_env:     (N, P) the same edges in the destination layout
    to_dst:      (N*P,) flat source-layout slot that fills each destination-layout slot
    to_src:      (N*P,) flat destination-layout slot that fills each source-layout slot
    """

    edge_center: torch.Tensor
    edge_slot: torch.Tensor
    edge_disp: torch.Tensor
    edge_env: torch.Tensor
    src_env: torch.Tensor
    dst_env: torch.Tensor
    to_dst: torch.Tensor
    to_src: torch.Tensor


class PairImages(NamedTuple):
    """What minimum-image pair distances of all atoms need (node attention's sinc bias).

    positions: (N, 3) and offsets: (M, 3) lattice translations of the enumerated images, both
    differentiable; inverse: (3, 3) inverse cell (no autograd) when the minimum image is found
    by rounding fractional separations (orthorhombic or non-periodic), else empty (search all
    images); periodic: (3,) 1.0 on periodic axes; strides: (3,) image index = centre + n . strides.
    """

    positions: torch.Tensor
    offsets: torch.Tensor
    inverse: torch.Tensor
    periodic: torch.Tensor
    strides: torch.Tensor


def safe_norm(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over the last axis with zero value and zero gradient at 0."""
    squared = vectors.square().sum(dim=-1)
    norm = squared.clamp_min(1e-12).sqrt()
    return torch.where(squared <= 1e-12, torch.zeros_like(norm), norm)


def wrap_positions(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                   periodic: Optional[List[bool]] = None) -> torch.Tensor:
    """Move atoms into the cell along periodic axes (fractional coordinate mod 1).

    The shift is a lattice vector computed without autograd, so d(wrapped)/d(positions)
    is the identity. ``periodic``: pbc as Python bools, when the caller has read them.
    """
    if periodic is None:
        flags: List[bool] = pbc.tolist()
        periodic = flags
    if not any(periodic):
        return positions
    fractional = torch.linalg.solve(cell.detach().T, positions.detach().T).T
    shift = torch.floor(fractional) * pbc.to(positions.dtype)
    return positions - shift @ cell.detach()


class CellPlan(NamedTuple):
    """What the graph and node attention need to know about the cell, read to the host once
    per call (the only host synchronisation about the cell).

    periodic: per axis; reps: images per side, as fairchem counts them (ceil(cutoff / plane
    spacing) on periodic axes, 0 on the others); wide: every periodic plane spacing exceeds
    twice the candidate search radius (a minimum-image search suffices); orthorhombic: no
    off-diagonal cell entries (pair minimum images by rounding).
    """

    periodic: List[bool]
    reps: List[int]
    wide: bool
    orthorhombic: bool


def cell_plan(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float, search_radius: float) -> CellPlan:
    """``CellPlan`` of this cell, computed in the cell's dtype and read in one host copy."""
    frozen = cell.detach()
    signed_volume = torch.dot(frozen[0], torch.linalg.cross(frozen[1], frozen[2]))
    normals = [torch.linalg.cross(frozen[(axis + 1) % 3], frozen[(axis + 2) % 3]) for axis in range(3)]
    inverse_spacings = torch.stack([torch.linalg.norm(normal / signed_volume) for normal in normals])
    spacings = torch.stack([signed_volume.abs() / torch.linalg.norm(normal) for normal in normals])
    reps = torch.where(pbc, torch.ceil(cutoff * inverse_spacings), torch.zeros_like(inverse_spacings))
    off_diagonal = (frozen - torch.diag(torch.diagonal(frozen))).abs().max().reshape(1)
    values: List[float] = torch.cat([pbc.to(frozen.dtype), reps, spacings, off_diagonal]).tolist()
    periodic = [v > 0.5 for v in values[0:3]]
    wide = any(periodic)
    for axis in range(3):
        if periodic[axis] and not values[6 + axis] > 2.0 * search_radius:
            wide = False
    return CellPlan(periodic, [int(v) for v in values[3:6]], wide, values[9] == 0.0)


def lattice_images(reps: List[int], cell: torch.Tensor) -> torch.Tensor:
    """Integer image vectors (M, 3) in fairchem's order; (0,0,0) sits at M // 2."""
    ranges = [torch.arange(-r, r + 1, dtype=cell.dtype, device=cell.device) for r in reps]
    return torch.cartesian_prod(ranges[0], ranges[1], ranges[2]).reshape(-1, 3)


def find_candidates_minimum_image(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                                  radius: float, reps: List[int], block_elements: int = 1 << 22
                                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``find_candidates`` in O(N^2) for cells wider than 2 * radius along periodic axes.

    Then a pair has at most one image within ``radius``: the one with fractional
    separation rounded into [-1/2, 1/2], so no image loop is needed.
    """
    n_atoms = positions.shape[0]
    rows_per_block = max(1, block_elements // max(1, n_atoms * 3))
    inverse = torch.linalg.inv(cell)
    periodic = pbc.to(positions.dtype)
    widths = [2 * r + 1 for r in reps]
    src: List[torch.Tensor] = []
    dst: List[torch.Tensor] = []
    img: List[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, n_atoms, rows_per_block):
            stop = min(start + rows_per_block, n_atoms)
            separation = positions[None, :, :] - positions[start:stop, None, :]
            shift = -torch.round(separation @ inverse) * periodic
            distance = torch.linalg.norm(separation + shift @ cell, dim=-1)
            n = shift.to(torch.long)
            image = ((n[..., 0] + reps[0]) * widths[1] + n[..., 1] + reps[1]) * widths[2] + n[..., 2] + reps[2]
            found = torch.nonzero(distance < radius)
            src.append(found[:, 0] + start)
            dst.append(found[:, 1])
            img.append(image[found[:, 0], found[:, 1]])
    return torch.cat(src), torch.cat(dst), torch.cat(img)


def find_candidates(positions: torch.Tensor, offsets: torch.Tensor, radius: float,
                    block_elements: int = 1 << 22) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (i, j, m) with |r_j + offset_m - r_i| < radius, in (i, j, m) order; no autograd.

    Distances are evaluated in blocks of about ``block_elements`` (i, j, image) triples.
    """
    n_atoms = positions.shape[0]
    n_images = offsets.shape[0]
    rows_per_block = max(1, block_elements // max(1, n_atoms * n_images))
    targets = positions[None, :, None, :] + offsets[None, None, :, :]  # (1, N, M, 3)
    src: List[torch.Tensor] = []
    dst: List[torch.Tensor] = []
    img: List[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, n_atoms, rows_per_block):
            stop = min(start + rows_per_block, n_atoms)
            distance = torch.linalg.norm(targets - positions[start:stop, None, None, :], dim=-1)
            found = torch.nonzero(distance < radius)
            src.append(found[:, 0] + start)
            dst.append(found[:, 1])
            img.append(found[:, 2])
    return torch.cat(src), torch.cat(dst), torch.cat(img)


def bump(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Smooth step of x / scale: 0 at or below -4, 1/2 at 0, 1 at or above 4 (fairchem's
    soft-rank kernel)."""
    # e^{-2/(1+y)} / (e^{-2/(1+y)} + e^{-2/(1-y)}) = sigmoid(4y / (1 - y^2)) with y = x/4.
    # Clamping y just inside (-1, 1) gives exactly 0 or 1 (the sigmoid saturates) with zero
    # gradient outside, in 7 kernels instead of 16.
    edge = 1.0 - 1e-6  # |y| beyond this: the sigmoid is exactly 0 or 1 in float32 and float64
    y = (x * (0.25 / scale)).clamp(-edge, edge)
    return torch.sigmoid(4.0 * y / (1.0 - y.square()))


def _segment_order(segment: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Permutation sorting by segment, then by value within a segment."""
    by_value = torch.sort(value, stable=True)[1]
    by_segment = torch.sort(segment[by_value], stable=True)[1]
    return by_value[by_segment]


def _position_in_segment(sorted_segment: torch.Tensor, n_segments: int) -> torch.Tensor:
    counts = torch.bincount(sorted_segment, minlength=n_segments)
    starts = torch.cumsum(counts, dim=0) - counts
    return torch.arange(sorted_segment.shape[0], device=sorted_segment.device) - starts[sorted_segment]


def molecule_graph(positions: torch.Tensor, cutoff: float, knn_k: int, rank_scale: float,
                   lse_scale: float) -> NeighborGraph:
    """``build_neighbor_graph`` of a system with no periodic axis and at most k + delta atoms
    (a molecule or cluster, whose candidates are never truncated), in fixed shapes.

    Every ordered pair (i, j) is an edge and every atom has P = N slots. Pairs the general
    builder drops (beyond the search radius or the envelope) get env = +inf: they fill the
    trailing slots, which attention masks like empty ones, and weigh 0 in the bond order. The
    function is the general builder's (to round-off); there is no data-dependent size and no
    host sync, so a molecule's whole call compiles without graph breaks.
    """
    n_atoms = positions.shape[0]
    device = positions.device
    search_radius = cutoff + 4.0 * rank_scale
    disp = positions.unsqueeze(0) - positions.unsqueeze(1)  # (N, N, 3): r_j - r_i
    distance = safe_norm(disp)
    candidate = distance.detach() < search_radius
    # soft ranks as in build_neighbor_graph: non-candidates sit far away and add exactly 0
    far = 2.0 * search_radius + 100.0
    padded = torch.where(candidate, distance, torch.full_like(distance, far))
    src_rank = bump(padded[:, :, None] - padded[:, None, :], rank_scale).sum(dim=-1)
    # the reverse of i -> j is j -> i, a candidate exactly when i -> j is one
    beyond = torch.full_like(src_rank, 2.0 * knn_k)
    dst_rank = torch.where(candidate, src_rank.transpose(0, 1), beyond)
    stacked = torch.stack([src_rank / knn_k, dst_rank / knn_k, distance / cutoff], dim=0)
    env = lse_scale * torch.logsumexp(stacked / lse_scale, dim=0)
    env = torch.where(distance == 0.0, torch.zeros_like(env), env)
    kept = candidate & (env.detach() < 1.0)
    env = torch.where(kept, env, torch.full_like(env, float("inf")))

    with torch.no_grad():  # slots by envelope within each row (source) and column (destination)
        src_order = torch.sort(env.detach(), dim=1, stable=True)[1]
        dst_order = torch.sort(env.detach(), dim=0, stable=True)[1]
        slots = torch.arange(n_atoms, device=device)
        src_slot = torch.empty_like(src_order).scatter_(1, src_order, slots.unsqueeze(0).expand(n_atoms, n_atoms))
        dst_slot = torch.empty_like(dst_order).scatter_(0, dst_order, slots.unsqueeze(1).expand(n_atoms, n_atoms))
        src_flat = (slots.unsqueeze(1) * n_atoms + src_slot).reshape(-1)
        dst_flat = (slots.unsqueeze(0) * n_atoms + dst_slot).reshape(-1)
        to_dst = torch.empty_like(src_flat).scatter_(0, dst_flat, src_flat)
        to_src = torch.empty_like(src_flat).scatter_(0, src_flat, dst_flat)
    src_env = torch.gather(env, 1, src_order)
    dst_env = torch.gather(env, 0, dst_order).transpose(0, 1)
    center = slots.unsqueeze(1).expand(n_atoms, n_atoms).reshape(-1)
    return NeighborGraph(center, src_flat, disp.reshape(-1, 3), env.reshape(-1), src_env, dst_env,
                         to_dst, to_src)


def has_fixed_shapes(n_atoms: int, plan: CellPlan, knn_k: int, knn_delta: int) -> bool:
    """Whether a system's graph is ``molecule_graph``'s: no periodic axis, at most k + delta
    atoms (its shapes depend on the atom count only)."""
    return not any(plan.periodic) and n_atoms <= knn_k + knn_delta


def wide_cell_graph(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float,
                    knn_k: int, rank_scale: float, lse_scale: float, knn_delta: int,
                    n_slots: int) -> Tuple[NeighborGraph, torch.Tensor]:
    """``build_neighbor_graph`` of a periodic cell whose plane spacings all exceed twice the
    search radius (``CellPlan.wide``), in fixed shapes: no data-dependent size, no host sync.

    Each atom keeps its W = k + delta nearest minimum images (``torch.topk``), ranks them as the
    general builder does, and reads destination ranks and envelopes from dense (N, N) tables
    (a wide cell has at most one image of a pair within the search radius). Both layouts hold
    ``n_slots`` slots, the edges sorted by envelope; the empty ones have env = +inf and the
    dropped candidates are not edges. Returns the graph and the number of slots the layouts
    needed (a 0-d tensor): when it exceeds ``n_slots`` edges were cut off and the caller must
    rebuild with more slots (every kept edge's reverse is among its destination's W
    candidates, so W slots always suffice).
    """
    n_atoms = positions.shape[0]
    device = positions.device
    width = min(knn_k + knn_delta, n_atoms)
    n_slots = min(n_slots, width)
    search_radius = cutoff + 4.0 * rank_scale
    with torch.no_grad():  # the W nearest minimum images of every atom
        frozen = positions.detach()
        separation = frozen[None, :, :] - frozen[:, None, :]
        shift = -torch.round(separation @ torch.linalg.inv(cell.detach())) * pbc.to(positions.dtype)
        rough = torch.linalg.norm(separation + shift @ cell.detach(), dim=-1)
        rough = torch.where(rough < search_radius, rough, torch.full_like(rough, float("inf")))
        neighbour = torch.topk(rough, width, dim=1, largest=False, sorted=True)[1]  # (N, W)
        shift = torch.gather(shift, 1, neighbour.unsqueeze(-1).expand(n_atoms, width, 3))
    disp = (torch.index_select(positions, 0, neighbour.reshape(-1)).view(n_atoms, width, 3)
            - positions.unsqueeze(1) + shift @ cell)
    distance = safe_norm(disp)
    candidate = distance.detach() < search_radius
    far = 2.0 * search_radius + 100.0  # as in searched_graph: adds exactly 0 to real ranks
    padded = torch.where(candidate, distance, torch.full_like(distance, far))
    src_rank = bump(padded[:, :, None] - padded[:, None, :], rank_scale).sum(dim=-1)
    beyond = 2.0 * knn_k
    # ranks[i, j]: rank of j among i's candidates; the destination rank of i -> j is ranks[j, i]
    ranks = torch.full((n_atoms, n_atoms), beyond, dtype=distance.dtype, device=device).scatter(
        1, neighbour, src_rank)
    dst_rank = torch.where(candidate, torch.gather(ranks.T, 1, neighbour), torch.full_like(src_rank, beyond))
    stacked = torch.stack([src_rank / knn_k, dst_rank / knn_k, distance / cutoff], dim=0)
    env = lse_scale * torch.logsumexp(stacked / lse_scale, dim=0)
    env = torch.where(distance == 0.0, torch.zeros_like(env), env)
    env = torch.where(candidate & (env.detach() < 1.0), env, torch.full_like(env, float("inf")))
    # incoming[j, s]: envelope of the edge neighbour[j, s] -> j (+inf if it is not one)
    envs = torch.full((n_atoms, n_atoms), float("inf"), dtype=env.dtype, device=device).scatter(1, neighbour, env)
    incoming = torch.gather(envs.T, 1, neighbour)

    with torch.no_grad():  # the n_slots lowest envelopes of each row, in both layouts
        src_order = torch.sort(env.detach(), dim=1, stable=True)[1][:, :n_slots]
        dst_order = torch.sort(incoming.detach(), dim=1, stable=True)[1][:, :n_slots]
        target = torch.gather(neighbour, 1, src_order)  # destination of each source slot
        origin = torch.gather(neighbour, 1, dst_order)  # source of each destination slot
        slots = torch.arange(n_slots, device=device).expand(n_atoms, n_slots)
        src_slot = torch.zeros((n_atoms, n_atoms), dtype=torch.long, device=device).scatter(1, target, slots)
        dst_slot = torch.zeros((n_atoms, n_atoms), dtype=torch.long, device=device).scatter(1, origin, slots)
        to_src = (target * n_slots + torch.gather(dst_slot.T, 1, target)).reshape(-1)
        to_dst = (origin * n_slots + torch.gather(src_slot.T, 1, origin)).reshape(-1)
        needed = torch.maximum((env.detach() < 1.0).sum(dim=1).max(), (incoming.detach() < 1.0).sum(dim=1).max())
    src_env = torch.gather(env, 1, src_order)
    dst_env = torch.gather(incoming, 1, dst_order)
    with torch.no_grad():  # empty slots of the two layouts paired in order: both maps are permutations
        to_src, to_dst = pair_empty_slots(torch.isinf(src_env).reshape(-1), torch.isinf(dst_env).reshape(-1),
                                          to_src, to_dst)
    disp = torch.gather(disp, 1, src_order.unsqueeze(-1).expand(n_atoms, n_slots, 3))
    center = torch.arange(n_atoms, device=device).unsqueeze(1).expand(n_atoms, n_slots).reshape(-1)
    graph = NeighborGraph(center, torch.arange(n_atoms * n_slots, device=device), disp.reshape(-1, 3),
                          src_env.reshape(-1), src_env, dst_env, to_dst, to_src)
    return graph, needed


def pair_empty_slots(src_empty: torch.Tensor, dst_empty: torch.Tensor, to_src: torch.Tensor,
                     to_dst: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``to_src`` and ``to_dst`` with the n-th empty source slot and the n-th empty destination
    slot (flat order) mapped onto each other; fixed shapes (the two layouts have equally many)."""
    total = src_empty.shape[0]
    flat = torch.arange(total, device=src_empty.device)
    src_rank = torch.where(src_empty, torch.cumsum(src_empty.long(), 0) - 1, total)  # total: not empty
    dst_rank = torch.where(dst_empty, torch.cumsum(dst_empty.long(), 0) - 1, total)
    src_by_rank = torch.zeros(total + 1, dtype=flat.dtype, device=flat.device).scatter(0, src_rank, flat)
    dst_by_rank = torch.zeros(total + 1, dtype=flat.dtype, device=flat.device).scatter(0, dst_rank, flat)
    return (torch.where(src_empty, dst_by_rank[src_rank], to_src),
            torch.where(dst_empty, src_by_rank[dst_rank], to_dst))


def build_neighbor_graph(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                         cutoff: float, knn_k: int, rank_scale: float = 0.2,
                         lse_scale: float = 0.1, knn_delta: int = 20,
                         plan: Optional[CellPlan] = None) -> NeighborGraph:
    """The soft bi-kNN graph of one system; differentiable in positions and cell.

    positions: (N, 3) Angstrom, already wrapped; cell: (3, 3) rows are lattice vectors;
    pbc: (3,) bool. Periodic axes need a non-singular cell. ``plan``: ``cell_plan`` of this
    cell, when the caller has it already.
    """
    if plan is None:
        plan = cell_plan(cell, pbc, cutoff, cutoff + 4.0 * rank_scale)
    if has_fixed_shapes(positions.shape[0], plan, knn_k, knn_delta):
        return molecule_graph(positions, cutoff, knn_k, rank_scale, lse_scale)
    return searched_graph(positions, cell, pbc, cutoff, knn_k, rank_scale, lse_scale, knn_delta, plan)


def searched_graph(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float,
                   knn_k: int, rank_scale: float, lse_scale: float, knn_delta: int,
                   plan: CellPlan) -> NeighborGraph:
    """``build_neighbor_graph`` by candidate search: periodic systems and large molecules."""
    n_atoms = positions.shape[0]
    device = positions.device
    search_radius = cutoff + 4.0 * rank_scale
    reps = plan.reps
    images = lattice_images(reps, cell.detach())
    n_images = images.shape[0]
    offsets = images @ cell  # differentiable in the (strained) cell
    if plan.wide:
        src, dst, img = find_candidates_minimum_image(
            positions.detach(), cell.detach(), pbc, search_radius, reps)
    else:
        src, dst, img = find_candidates(positions.detach(), offsets.detach(), search_radius)

    # Keep the k + delta nearest candidates of every source atom (discrete choice).
    # Candidates arrive grouped by source atom; sort each row in an (N, widest) table.
    with torch.no_grad():
        rough = torch.linalg.norm(positions[dst] + offsets[img] - positions[src], dim=-1)
        counts = torch.bincount(src, minlength=n_atoms)
        starts = torch.cumsum(counts, dim=0) - counts
        widest = int(counts.max().item())
        table = torch.full((n_atoms, widest), float("inf"), dtype=rough.dtype, device=device)
        table[src, torch.arange(src.shape[0], device=device) - starts[src]] = rough
        ordered, columns = torch.sort(table, dim=1, stable=True)
        width = min(knn_k + knn_delta, widest)
        chosen = ordered[:, :width] < float("inf")
        pick = (starts[:, None] + columns[:, :width])[chosen]
        src, dst, img = src[pick], dst[pick], img[pick]
        slot = torch.arange(width, device=device).expand(n_atoms, width)[chosen]

    disp = (torch.index_select(positions, 0, dst) + torch.index_select(offsets, 0, img)
            - torch.index_select(positions, 0, src))
    distance = safe_norm(disp)

    # Soft source ranks within each atom's candidate row.
    row_flat = src * width + slot
    # empty row entries sit far away (> 100 A beyond any real one): they add exactly 0 to
    # real ranks, and their own ranks are never read
    far = 2.0 * search_radius + 100.0
    padded = scatter_to_slots(distance, row_flat, n_atoms * width, far).view(n_atoms, width)
    pair = bump(padded[:, :, None] - padded[:, None, :], rank_scale)
    src_rank = torch.index_select(pair.sum(dim=-1).reshape(-1), 0, row_flat)

    # Destination rank of i -> (j, m) is the source rank of j -> (i, -m).
    with torch.no_grad():
        key = (src * n_atoms + dst) * n_images + img
        reverse_key = (dst * n_atoms + src) * n_images + (n_images - 1 - img)
        sorted_key, key_order = torch.sort(key)
        where = torch.searchsorted(sorted_key, reverse_key).clamp_max(key.numel() - 1)
        has_reverse = sorted_key[where] == reverse_key
        reverse = key_order[where]
    # A missing reverse edge has rank "beyond k"; a finite stand-in keeps gradients finite.
    beyond = torch.full_like(src_rank, 2.0 * knn_k)
    dst_rank = torch.where(has_reverse, torch.index_select(src_rank, 0, reverse), beyond)

    stacked = torch.stack([src_rank / knn_k, dst_rank / knn_k, distance / cutoff], dim=0)
    env = lse_scale * torch.logsumexp(stacked / lse_scale, dim=0)
    is_self = distance == 0.0
    env = torch.where(is_self, torch.zeros_like(env), env)

    keep = env.detach() < 1.0
    src, dst, env, disp = src[keep], dst[keep], env[keep], disp[keep]

    with torch.no_grad():
        src_order = _segment_order(src, env.detach())
        src_slot = torch.empty_like(src)
        src_slot[src_order] = _position_in_segment(src[src_order], n_atoms)
        dst_order = _segment_order(dst, env.detach())
        dst_slot = torch.empty_like(dst)
        dst_slot[dst_order] = _position_in_segment(dst[dst_order], n_atoms)
        n_slots = int(torch.maximum(src_slot.max(), dst_slot.max()).item()) + 1
        src_flat = src * n_slots + src_slot
        dst_flat = dst * n_slots + dst_slot
        to_dst = torch.arange(n_atoms * n_slots, device=device)
        to_dst[dst_flat] = src_flat
        to_src = torch.arange(n_atoms * n_slots, device=device)
        to_src[src_flat] = dst_flat

    src_env = scatter_to_slots(env, src_flat, n_atoms * n_slots, float("inf")).view(n_atoms, n_slots)
    dst_env = scatter_to_slots(env, dst_flat, n_atoms * n_slots, float("inf")).view(n_atoms, n_slots)
    return NeighborGraph(src, src_flat, disp, env, src_env, dst_env, to_dst, to_src)


def scatter_to_slots(values: torch.Tensor, slots: torch.Tensor, n_total: int, fill: float) -> torch.Tensor:
    """(E, ...) values into a (n_total, ...) tensor at distinct flat ``slots``; others = fill."""
    shape = [n_total] + list(values.shape[1:])
    if fill == 0.0:
        return torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, slots, values)
    base = torch.full(shape, fill, dtype=values.dtype, device=values.device)
    mask = torch.zeros(n_total, dtype=torch.bool, device=values.device)
    mask[slots] = True
    spread = torch.zeros(shape, dtype=values.dtype, device=values.device).index_add(0, slots, values)
    return torch.where(mask.view([n_total] + [1] * (len(shape) - 1)), spread, base)


def envelope_bias(env: torch.Tensor) -> torch.Tensor:
    """Attention bias -x^2/(1-x^2) for x < 1, -inf otherwise (empty slots)."""
    inside = env < 1.0
    x = torch.where(inside, env, torch.zeros_like(env))
    bias = -x.square() / (1.0 - x.square())
    return torch.where(inside, bias, torch.full_like(env, float("-inf")))


def pair_images(positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, plan: CellPlan) -> PairImages:
    """Minimum-image bookkeeping over fairchem's image set (the min over enumerated images).

    For orthorhombic (or non-periodic) cells rounding the fractional separation gives that
    minimum directly (|n| <= 1 <= reps for wrapped atoms); otherwise all images are searched.
    """
    reps = plan.reps
    images = lattice_images(reps, cell.detach())
    widths = [2 * r + 1 for r in reps]
    strides = torch.tensor([widths[1] * widths[2], widths[2], 1], dtype=torch.long, device=positions.device)
    frozen = cell.detach()
    periodic = pbc.to(positions.dtype)
    if not any(plan.periodic):
        inverse = torch.eye(3, dtype=positions.dtype, device=positions.device)
    elif plan.orthorhombic:
        inverse = torch.linalg.inv(frozen)
    else:
        inverse = torch.empty((0, 3), dtype=positions.dtype, device=positions.device)
    return PairImages(positions, images @ cell, inverse, periodic, strides)


def minimum_image_index(pairs: PairImages, start: int, stop: int) -> torch.Tensor:
    """Image index (B, N) of the minimum-image partner j of each atom i in [start, stop)."""
    with torch.no_grad():
        positions = pairs.positions.detach()
        separation = positions[None, :, :] - positions[start:stop, None, :]
        if pairs.inverse.shape[0] > 0:
            shift = -torch.round(separation @ pairs.inverse) * pairs.periodic
            centre = pairs.offsets.shape[0] // 2
            return centre + (shift.to(torch.long) * pairs.strides).sum(dim=-1)
        offsets = pairs.offsets.detach()
        distance = torch.linalg.norm(separation[:, :, None, :] + offsets[None, None, :, :], dim=-1)
        return torch.argmin(distance, dim=2)


def minimum_image_distances(pairs: PairImages, start: int, stop: int,
                            block_elements: int = 1 << 22) -> torch.Tensor:
    """Differentiable minimum-image distances (B, N) from atoms [start, stop) to all atoms;
    the image search runs in row blocks of about ``block_elements`` (pair, image) entries."""
    n_atoms = pairs.positions.shape[0]
    rows = max(1, block_elements // max(1, n_atoms * pairs.offsets.shape[0]))
    index = torch.cat([minimum_image_index(pairs, first, min(first + rows, stop))
                       for first in range(start, stop, rows)])
    # index_select, not offsets[index]: the backward of advanced indexing sorts all B*N
    # entries onto the few image rows and took 90 % of a blocked call on a GPU.
    images = torch.index_select(pairs.offsets, 0, index.reshape(-1)).reshape(index.shape[0], n_atoms, 3)
    disp = pairs.positions[None, :, :] + images - pairs.positions[start:stop, None, :]
    return safe_norm(disp)


def pair_distances(pairs: PairImages, block_elements: int = 1 << 22) -> torch.Tensor:
    """Differentiable minimum-image distances of every pair i < j, in ``torch.triu_indices``
    order: (N (N - 1) / 2,). Half of ``minimum_image_distances`` over all rows (distances are
    symmetric); the image search runs in blocks of about ``block_elements`` entries."""
    n_atoms = pairs.positions.shape[0]
    index = torch.triu_indices(n_atoms, n_atoms, 1, device=pairs.positions.device)
    first, second = index[0], index[1]
    with torch.no_grad():
        positions = pairs.positions.detach()
        separation = torch.index_select(positions, 0, second) - torch.index_select(positions, 0, first)
        if pairs.inverse.shape[0] > 0:
            shift = -torch.round(separation @ pairs.inverse) * pairs.periodic
            image = pairs.offsets.shape[0] // 2 + (shift.to(torch.long) * pairs.strides).sum(dim=-1)
        else:
            offsets = pairs.offsets.detach()
            rows = max(1, block_elements // max(1, 3 * offsets.shape[0]))
            image = torch.cat([torch.argmin(torch.linalg.norm(separation[start:start + rows, None, :]
                                                              + offsets[None, :, :], dim=-1), dim=1)
                               for start in range(0, separation.shape[0], rows)]
                              + [torch.zeros(0, dtype=torch.long, device=separation.device)])
    # Both ends in one gather: two index_selects of the positions (by the two rows of one
    # triu_indices tensor) gave forces 0.1 % off in openmm-torch's C++ TorchScript executor
    # (energy exact; Python TorchScript and eager right).
    ends = torch.index_select(pairs.positions, 0, index.reshape(-1)).view(2, index.shape[1], 3)
    return safe_norm(ends[1] - ends[0] + torch.index_select(pairs.offsets, 0, image))


def pair_matrix_index(n_atoms: int, device: torch.device) -> torch.Tensor:
    """(N * N,) position of entry (i, j) in [pairs i < j in ``triu_indices`` order, then the
    N diagonal entries]: entry (i, j) and (j, i) read the same pair."""
    rows = torch.arange(n_atoms, device=device)
    low = torch.minimum(rows[:, None], rows[None, :])
    high = torch.maximum(rows[:, None], rows[None, :])
    pair = low * (2 * n_atoms - low - 1) // 2 + (high - low - 1)
    n_pairs = n_atoms * (n_atoms - 1) // 2
    return torch.where(low == high, n_pairs + low, pair).reshape(-1)
