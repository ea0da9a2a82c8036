"""Several systems in one model call (training and batched evaluation): ``evaluate_batch``.

Every system keeps its own cell, neighbour graph and all-to-all node attention: no atom
attends to another system's atoms. The featurization runs per system; the slot states of
all systems are then stacked (slots padded to the widest system) so that the neighbourhood
attention, feed-forward layers and heads run once for the whole batch, and node attention
runs once per group of systems with the same number of atoms (no padding of atoms).
Energies, forces and virials equal per-system ``AllScAIP`` calls to rounding.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Protocol, Sequence

import torch
from torch.nn import functional as F

from allscaip.attention import NodeAttention
from allscaip.features import sine_kernels
from allscaip.graph import PairImages, pair_distances, pair_matrix_index, wrap_positions
from allscaip.model import AllScAIP, BlockInputs, apply_strain


class System(Protocol):
    """What a batch needs of each system (``allscaip.evaluate.FrameTensors`` has it)."""

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    charge: torch.Tensor
    spin: torch.Tensor


class BatchResult(NamedTuple):
    """energies (S,) float64 eV; forces (N_total, 3) eV/A in batch atom order (empty if not
    computed); virials (S, 3, 3) eV (empty if not computed); offsets (S + 1,) atom ranges."""

    energies: torch.Tensor
    forces: torch.Tensor
    virials: torch.Tensor
    offsets: List[int]


class NodeGroup(NamedTuple):
    """Systems with the same atom count: their batch rows (S_g, N_g) and, with the sinc
    mask, their pair kernels (S_g, N_g (N_g - 1) / 2, K) and ``pair_matrix_index(N_g)`` (else
    empty)."""

    atoms: torch.Tensor
    sines: torch.Tensor
    sine_index: torch.Tensor


def evaluate_batch(model: AllScAIP, systems: Sequence[System], compute_forces: bool = True,
                   compute_virial: bool = False, check_inputs: bool = True) -> BatchResult:
    """Energies, forces and virials of ``systems`` from one pass of the network. In training
    mode the results are differentiable (force and stress training)."""
    if len(systems) == 0:
        raise ValueError("evaluate_batch needs at least one system")
    backbone = model.backbone
    conserving = not model.direct_forces
    with_gradients = conserving and (compute_forces or compute_virial)
    leaves: List[torch.Tensor] = []
    strains: List[torch.Tensor] = []
    prepared = []
    sines: List[torch.Tensor] = []
    states = []  # (wrapped positions, strain, plan) of each system, for the repulsive wall
    for system in systems:
        if check_inputs:
            model.check_inputs(system.positions, system.numbers, system.cell, system.pbc)
        plan = backbone.cell_plan(system.cell, system.pbc)
        wrapped = wrap_positions(system.positions, system.cell, system.pbc, plan.periodic)
        strain = torch.zeros((3, 3), dtype=wrapped.dtype, device=wrapped.device)
        if with_gradients:
            wrapped = wrapped.detach().requires_grad_(True)
            leaves.append(wrapped)
            if compute_virial:
                strain.requires_grad_(True)
                strains.append(strain)
        states.append((wrapped, strain, plan))
        positions, cell = apply_strain(wrapped, system.cell, strain)
        x, inputs = backbone.prepare(positions, system.numbers, cell, system.pbc, system.charge,
                                     system.spin, plan)
        prepared.append((x, inputs))
        sines.append(_dense_sines(model, inputs.pairs, inputs.sines))

    x, inputs = merge_slot_layouts(prepared)
    sizes = [int(p[0].shape[0]) for p in prepared]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + size)
    groups, order = node_groups(sizes, offsets, sines, x.device)
    for block in backbone.transformer_blocks:
        y = block.neighborhood(x, inputs, 0)
        x = block.combine(y, grouped_node_attention(block.node_attention, y[:, 0], groups, order,
                                                    backbone.sinc_omega))
    nodes = x[:, 0]
    system_of_atom = torch.repeat_interleave(torch.arange(len(sizes), device=x.device),
                                             torch.tensor(sizes, device=x.device))
    raw = torch.zeros(len(sizes), dtype=nodes.dtype, device=nodes.device).index_add(
        0, system_of_atom, model.energy_head(nodes))

    forces = torch.empty(0, dtype=nodes.dtype, device=nodes.device)
    virials = torch.empty(0, dtype=nodes.dtype, device=nodes.device)
    if with_gradients:
        grads = torch.autograd.grad([raw.sum()], leaves + strains, create_graph=model.training)
        if compute_forces:
            forces = -model.force_scale * torch.cat(list(grads[:len(leaves)]))
        if compute_virial:
            virials = -model.stress_scale * torch.stack(list(grads[len(leaves):]))
    elif compute_forces:
        forces = model.force_scale * model.force_head(nodes)

    numbers = torch.cat([system.numbers for system in systems])
    references = torch.zeros(len(sizes), dtype=torch.float64, device=nodes.device).index_add(
        0, system_of_atom, model.element_references[numbers])
    energies = (raw * model.energy_scale + model.energy_shift).to(torch.float64) + references
    if model.repulsion_radius > 0.0:
        walls = torch.stack([model.repulsion(wrapped, system.numbers, system.cell, system.pbc, strain, plan, [])[0]
                             for system, (wrapped, strain, plan) in zip(systems, states)])
        energies = energies + walls.to(torch.float64)
        if with_gradients:
            grads = torch.autograd.grad([walls.sum()], leaves + strains, create_graph=model.training,
                                        allow_unused=True)
            grads = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(grads, leaves + strains)]
            if compute_forces:
                forces = forces - torch.cat(grads[:len(leaves)])
            if compute_virial:
                virials = virials - torch.stack(grads[len(leaves):])
    return BatchResult(energies, forces, virials, offsets)


def _dense_sines(model: AllScAIP, pairs: PairImages, sines: torch.Tensor) -> torch.Tensor:
    """The system's pair kernels for dense node attention (``prepare`` computes them only when
    the model is configured dense), or empty without the sinc mask."""
    backbone = model.backbone
    if not (backbone.use_node_path and backbone.use_sincx_mask) or sines.numel() > 0:
        return sines
    return sine_kernels(pair_distances(pairs), backbone.sinc_omega)


def merge_slot_layouts(prepared: Sequence[tuple]) -> tuple[torch.Tensor, BlockInputs]:
    """Stack per-system slot states (N_s, P_s, H) and neighbourhood inputs into one batch
    with P = max P_s (see ``widen_slots``)."""
    width = max(int(x.shape[1]) for x, _ in prepared)
    parts, start = [], 0
    for x, inputs in prepared:
        parts.append(widen_slots(x, inputs, width, start))
        start += int(x.shape[0])
    x, src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles = [torch.cat(part) for part in zip(*parts)]
    first = prepared[0][1]
    empty = first.src_angles.new_empty(0)
    merged = BlockInputs(src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles, empty,
                         first.sine_index.new_empty(0), first.pairs)
    return x, merged


def widen_slots(x: torch.Tensor, inputs: BlockInputs, width: int, start: int = 0) -> tuple:
    """One system's slot layout widened to ``width`` slots, its atoms numbered from ``start``:
    (x, src_bias, dst_bias, to_dst, to_src, src_angles, dst_angles). Added slots are empty
    (zero state, bias -inf, no angle weight) and map onto themselves, so real slots never
    read them and the energy is unchanged."""
    n_atoms, n_slots = int(x.shape[0]), int(x.shape[1])
    pad = width - n_slots
    angles = [inputs.src_angles, inputs.dst_angles]
    if inputs.src_angles.numel() > 0:
        angles = [F.pad(a, (0, pad, 0, pad)) for a in angles]
    return (F.pad(x, (0, 0, 0, pad)), F.pad(inputs.src_bias, (0, pad), value=float("-inf")),
            F.pad(inputs.dst_bias, (0, pad), value=float("-inf")),
            _remap_slots(inputs.to_dst, n_atoms, n_slots, width, start),
            _remap_slots(inputs.to_src, n_atoms, n_slots, width, start), angles[0], angles[1])


def _remap_slots(index: torch.Tensor, n_atoms: int, n_slots: int, width: int, start: int) -> torch.Tensor:
    """A system's flat slot map (atom * n_slots + slot) in the batch's numbering
    ((start + atom) * width + slot); padded slots map to themselves."""
    own = torch.arange(n_atoms * width, device=index.device).view(n_atoms, width) + start * width
    mapped = (index // n_slots + start) * width + index % n_slots
    return torch.cat([mapped.view(n_atoms, n_slots), own[:, n_slots:]], dim=1).reshape(-1)


def node_groups(sizes: List[int], offsets: List[int], sines: List[torch.Tensor],
                device: torch.device) -> tuple[List[NodeGroup], torch.Tensor]:
    """Systems grouped by atom count, and the permutation that puts the groups' stacked rows
    back in batch order."""
    by_size: dict[int, List[int]] = {}
    for index, size in enumerate(sizes):
        by_size.setdefault(size, []).append(index)
    groups: List[NodeGroup] = []
    rows: List[torch.Tensor] = []
    for size, members in by_size.items():
        atoms = torch.stack([torch.arange(offsets[m], offsets[m] + size, device=device) for m in members])
        if sines[members[0]].numel() > 0:
            groups.append(NodeGroup(atoms, torch.stack([sines[m] for m in members]), pair_matrix_index(size, device)))
        else:
            groups.append(NodeGroup(atoms, sines[members[0]], sines[members[0]].new_empty(0, dtype=torch.long)))
        rows.append(atoms.reshape(-1))
    return groups, torch.argsort(torch.cat(rows))


def grouped_node_attention(attention: Optional[NodeAttention], nodes: torch.Tensor, groups: List[NodeGroup],
                           order: torch.Tensor, omega: torch.Tensor) -> Optional[torch.Tensor]:
    """Node attention update (N_total, H) of every system over its own atoms; None without
    the node path."""
    if attention is None:
        return None
    normed = attention.node_norm(nodes)
    hidden = nodes.shape[1]
    updates: List[torch.Tensor] = []
    for group in groups:
        q, k, v = attention.project(normed[group.atoms])
        bias: Optional[torch.Tensor] = None
        if attention.use_sincx_mask:
            bias = attention.pair_bias(group.sines, group.sine_index, omega, group.atoms.shape[1]).to(q.dtype)
        updates.append(attention.attend(q, k, v, bias).reshape(-1, hidden))
    return torch.index_select(torch.cat(updates), 0, order)
