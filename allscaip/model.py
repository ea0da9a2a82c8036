"""The AllScAIP network: input embedding, attention blocks, energy and force heads.

Inside the model lengths are Angstrom and energies eV. Module and parameter names
mirror fairchem's so a fairchem backbone state dict loads into ``backbone`` unchanged.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch import nn

from allscaip.attention import (SLOT_KERNEL_MIN_ATOMS, NeighborhoodAttention, NodeAttention, compiling, gather_slots,
                                gradients, legendre_weights, rms_norm)
from allscaip.config import ModelConfig
from allscaip.features import (bond_orientational_order, gaussian_grid,
                               gaussian_offsets, gaussian_window, sinc_frequencies, sine_kernels,
                               unit_vectors)
from allscaip.graph import (CellPlan, NeighborGraph, PairImages, build_neighbor_graph, cell_plan, envelope_bias,
                            pair_distances, pair_images, pair_matrix_index, safe_norm, scatter_to_slots,
                            wrap_positions)
from allscaip.repulsion import repulsion_energy, repulsion_tables
from allscaip.spherical import PolynomialHarmonics

CHARGE_OFFSET = 100  # charge embedding row = total charge + 100 (charges -100..100)
N_CHARGES = 201
N_SPINS = 101  # spin embedding row = spin multiplicity (0..100)
NEIGHBORHOOD_CHUNK = 16  # blocked mode: neighbourhood attention on 16 * block_size atoms at once


def linear_gelu(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.GELU())


def two_layer_mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    """Linear -> GELU -> Linear, nested as fairchem nests it (keys ``0.0.*``, ``1.0.*``)."""
    return nn.Sequential(linear_gelu(n_in, n_hidden), nn.Sequential(nn.Linear(n_hidden, n_out)))


def apply_strain(positions: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Positions and cell deformed by the symmetric part of ``strain`` (3, 3); the virial is
    minus the energy's gradient with respect to ``strain`` at zero."""
    symmetric = 0.5 * (strain + strain.T)
    return positions + positions @ symmetric, cell + cell @ symmetric


class LookupEmbedding(nn.Module):
    """Embedding table for an integer system property (total charge or spin)."""

    def __init__(self, rows: int, size: int):
        super().__init__()
        self.rand_emb = nn.Embedding(rows, size)

    def forward(self, row: torch.Tensor) -> torch.Tensor:
        return self.rand_emb(row)


class InputBlock(nn.Module):
    """Initial slot states: element, local order, charge/spin and edge geometry."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.atomic_embedding = nn.Embedding(cfg.max_num_elements, h)
        self.node_direction_embedding = linear_gelu(cfg.node_direction_expansion_size, h)
        self.node_norm = rms_norm(2 * h)
        self.node_linear = linear_gelu(2 * h, h)
        self.edge_attr_linear = linear_gelu(
            cfg.edge_distance_expansion_size + cfg.edge_direction_expansion_size**2, h)
        self.edge_feature_linear = linear_gelu(2 * h, h)
        self.charge_embedding = LookupEmbedding(N_CHARGES, h)
        self.spin_embedding = LookupEmbedding(N_SPINS, h)
        self.charge_spin_linear = linear_gelu(2 * h, h)
        self.charge_offset = CHARGE_OFFSET

    def edge_attributes(self, gauss_index: torch.Tensor, gauss_value: torch.Tensor,
                        edge_harmonics: torch.Tensor) -> torch.Tensor:
        """GELU(W [gaussians(d), Y(r)] + b) with the Gaussian part summed over each edge's
        window of centres only (all others are exactly negligible): (E, H)."""
        linear = self.edge_attr_linear[0]
        n_gauss = linear.weight.shape[1] - edge_harmonics.shape[1]
        distance_weight = linear.weight[:, :n_gauss].T.contiguous()  # (G, H)
        # double-differentiable (force training); fused when compiled (embedding_bag's backward is slow on CPU)
        if self.training or compiling():
            dense = torch.zeros((gauss_value.shape[0], n_gauss), dtype=gauss_value.dtype,
                                device=gauss_value.device).scatter_add(1, gauss_index, gauss_value)
            pre = dense @ distance_weight
        else:
            pre = nn.functional.embedding_bag(gauss_index, distance_weight,
                                              per_sample_weights=gauss_value, mode="sum")
        pre = pre + nn.functional.linear(edge_harmonics, linear.weight[:, n_gauss:], linear.bias)
        return self.edge_attr_linear[1](pre)

    def forward(self, atomic_numbers: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor,
                order: torch.Tensor, gauss_index: torch.Tensor, gauss_value: torch.Tensor,
                edge_harmonics: torch.Tensor, edge_center: torch.Tensor,
                edge_slot: torch.Tensor, n_slots: int) -> torch.Tensor:
        """order: (N, L) bond-orientational order; per kept edge: Gaussian window of its
        distance and harmonics of its direction -> slot states (N, P, H), zero in empty
        slots (which attention masks out)."""
        nodes = torch.cat([self.atomic_embedding(atomic_numbers),
                           self.node_direction_embedding(order)], dim=-1)
        nodes = self.node_linear(self.node_norm(nodes))
        system = torch.cat([self.charge_embedding(charge + self.charge_offset),
                            self.spin_embedding(spin)], dim=-1)
        nodes = nodes + self.charge_spin_linear(system)
        edges = self.edge_attributes(gauss_index, gauss_value, edge_harmonics)
        edges = self.edge_feature_linear(torch.cat([torch.index_select(nodes, 0, edge_center), edges], dim=-1))
        n_atoms, hidden = nodes.shape
        return scatter_to_slots(edges, edge_slot, n_atoms * n_slots, 0.0).view(n_atoms, n_slots, hidden)


class FeedForward(nn.Module):
    """Pre-norm residual MLP."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.ffn = two_layer_mlp(h, h * cfg.ffn_hidden_layer_multiplier, h)
        self.ffn_norm = rms_norm(h)
        scale = 1.0 / cfg.num_layers if cfg.use_residual_scaling else 1.0
        self.ffn_res_scale = nn.Parameter(torch.tensor(scale), requires_grad=cfg.use_residual_scaling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_res_scale * self.ffn(self.ffn_norm(x)) + x


class BlockInputs(NamedTuple):
    """What every attention block reads besides the slot states (see Backbone.prepare)."""

    src_bias: torch.Tensor
    dst_bias: torch.Tensor
    to_dst: torch.Tensor
    to_src: torch.Tensor
    src_angles: torch.Tensor  # Legendre weights of slot-pair angles (B, L, P, P) (frequency mask), else empty;
    # with the fused slot kernel (Backbone.slot_kernel_applies) the slots' edge directions (B, P, 3)
    dst_angles: torch.Tensor
    sines: torch.Tensor  # (N (N-1)/2, K) sine_kernels of the pairs i < j (dense node attention), else empty
    sine_index: torch.Tensor  # pair_matrix_index(N) that spreads pair values over (N, N), else empty
    pairs: PairImages  # for blocked node attention


class GraphAttentionBlock(nn.Module):
    """Neighbourhood attention -> edge FFN (slots 1..) and node attention + node FFN (slot 0).

    Without the node path (``use_node_path=False``, as in fairchem) slot 0 goes straight to
    the node FFN and the block sees only the atom's neighbourhood.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.neighborhood_attention = NeighborhoodAttention(
            cfg.hidden_size, cfg.atten_num_heads, cfg.num_layers, list(cfg.freequency_list),
            cfg.use_freq_mask, cfg.use_residual_scaling)
        self.edge_ffn = FeedForward(cfg)
        self.node_attention: Optional[NodeAttention] = None
        if cfg.use_node_path:
            self.node_attention = NodeAttention(
                cfg.hidden_size, cfg.atten_num_heads, cfg.num_layers, cfg.attn_num_freq,
                cfg.use_sincx_mask, cfg.use_residual_scaling)
        self.node_ffn = FeedForward(cfg)
        self.chunk_factor = NEIGHBORHOOD_CHUNK

    def neighborhood(self, x: torch.Tensor, inputs: BlockInputs, block_size: int) -> torch.Tensor:
        """Neighbourhood attention; with blocked node attention, in chunks of
        chunk_factor * block_size atoms (same result)."""
        return self.neighborhood_attention(x, inputs.src_bias, inputs.dst_bias, inputs.to_dst,
                                           inputs.to_src, inputs.src_angles, inputs.dst_angles,
                                           self.chunk_factor * block_size)

    def node_update(self, y: torch.Tensor, inputs: BlockInputs, omega: torch.Tensor,
                    block_size: int) -> Optional[torch.Tensor]:
        """Node attention update of slot 0 (dense if block_size is 0), None without node path."""
        node_attention = self.node_attention
        if node_attention is None:
            return None
        if block_size > 0:
            return node_attention.blocked_attention(y[:, 0], inputs.pairs, omega, block_size)
        return node_attention.attention(y[:, 0], inputs.sines, inputs.sine_index, omega)

    def combine(self, y: torch.Tensor, update: Optional[torch.Tensor]) -> torch.Tensor:
        """Residual node update, then the node and edge FFNs: (N, P, H)."""
        nodes = y[:, 0]
        node_attention = self.node_attention
        if node_attention is not None and update is not None:
            nodes = node_attention.node_attn_res_scale * update + nodes
        nodes = self.node_ffn(nodes)
        edges = self.edge_ffn(y[:, 1:])
        return torch.cat([nodes.unsqueeze(1), edges], dim=1)

    def forward(self, x: torch.Tensor, inputs: BlockInputs, omega: torch.Tensor,
                block_size: int) -> torch.Tensor:
        y = self.neighborhood(x, inputs, block_size)
        return self.combine(y, self.node_update(y, inputs, omega, block_size))

    def backward_step(self, x: torch.Tensor, update: Optional[torch.Tensor], inputs: BlockInputs,
                      omega: torch.Tensor, block_size: int, grad_output: torch.Tensor) -> List[torch.Tensor]:
        """Recompute this block from its input x and pull grad_output back, chunk by chunk:
        gradients with respect to x, src_bias, dst_bias, src_angles, dst_angles, pair
        positions and image offsets."""
        attention = self.neighborhood_attention
        chunk = self.chunk_factor * block_size
        with torch.no_grad():
            middle = attention.halfway(x, inputs.src_bias, inputs.to_dst, inputs.src_angles, chunk)
            y = attention.finish(middle, inputs.dst_bias, inputs.to_src, inputs.dst_angles, chunk)
        y = y.requires_grad_(True)
        pair_grads = [torch.zeros_like(inputs.pairs.positions), torch.zeros_like(inputs.pairs.offsets)]
        node_attention = self.node_attention
        if node_attention is None or update is None:
            grad_y = gradients([self.combine(y, None)], [y], [grad_output])[0]
        else:
            update = update.detach().requires_grad_(True)
            grad_update, grad_y = gradients([self.combine(y, update)], [update, y], [grad_output])
            grad_node, pair_grads[0], pair_grads[1] = node_attention.blocked_vjp(
                y[:, 0], inputs.pairs, omega, block_size, grad_update)
            grad_y = torch.cat([(grad_y[:, 0] + grad_node).unsqueeze(1), grad_y[:, 1:]], dim=1)
        return attention.chunked_vjp(x, middle, inputs.src_bias, inputs.dst_bias, inputs.to_dst,
                                     inputs.to_src, inputs.src_angles, inputs.dst_angles, grad_y,
                                     chunk) + pair_grads


class Backbone(nn.Module):
    """Geometry -> per-atom representations (N, H)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_block = InputBlock(cfg)
        self.transformer_blocks = nn.ModuleList([GraphAttentionBlock(cfg) for _ in range(cfg.num_layers)])
        self.cutoff = float(cfg.max_radius)
        self.knn_k = int(cfg.knn_k)
        self.rank_scale = float(cfg.knn_sigmoid_scale)
        self.lse_scale = float(cfg.knn_lse_scale)
        self.knn_delta = int(cfg.knn_delta)
        self.use_envelope = bool(cfg.use_envelope)
        self.use_freq_mask = bool(cfg.use_freq_mask)
        self.frequency_blocks = len(cfg.freequency_list)
        self.use_sincx_mask = bool(cfg.use_sincx_mask)
        self.use_node_path = bool(cfg.use_node_path)
        self.block_size = int(cfg.node_attention_block_size)
        self.smooth_node_order = bool(cfg.smooth_node_order)
        self.edge_lmax = cfg.edge_direction_expansion_size - 1
        self.order_lmax = cfg.node_direction_expansion_size - 1
        self.harmonics_lmax = max(self.edge_lmax, self.order_lmax)
        self.harmonics = PolynomialHarmonics(self.harmonics_lmax)
        offsets = gaussian_offsets(cfg.max_radius, cfg.edge_distance_expansion_size)
        self.register_buffer("distance_offsets", offsets, persistent=False)
        self.gaussian_grid: Tuple[float, float] = gaussian_grid(offsets)
        self.register_buffer("sinc_omega", sinc_frequencies(cfg.attn_num_freq), persistent=False)
        self.use_slot_kernel = False  # set by allscaip.compiled where the fused CPU kernel is built

    def slot_kernel_applies(self, n_atoms: int) -> bool:
        """Whether the neighbourhood attention runs through the fused kernel (``allscaip.slot_kernel``):
        the layouts then carry their slots' edge directions (B, P, 3), not their Legendre table."""
        if torch.jit.is_scripting():
            return False
        return self.use_slot_kernel and n_atoms >= SLOT_KERNEL_MIN_ATOMS

    def attention_bias(self, env: torch.Tensor) -> torch.Tensor:
        if self.use_envelope:
            return envelope_bias(env)
        return torch.where(env < 1.0, torch.zeros_like(env), torch.full_like(env, float("-inf")))

    def cell_plan(self, cell: torch.Tensor, pbc: torch.Tensor) -> CellPlan:
        """The cell facts the graph and node attention share (one host read per call)."""
        return cell_plan(cell, pbc, self.cutoff, self.cutoff + 4.0 * self.rank_scale)

    def prepare(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor,
                plan: Optional[CellPlan] = None) -> Tuple[torch.Tensor, BlockInputs]:
        """Graph and features: initial slot states (N, P, H) and the blocks' other inputs."""
        if plan is None:
            plan = self.cell_plan(cell, pbc)
        graph: NeighborGraph = build_neighbor_graph(
            positions, cell, pbc, self.cutoff, self.knn_k, self.rank_scale, self.lse_scale,
            self.knn_delta, plan)
        return self.featurize(graph, positions, atomic_numbers, cell, pbc, charge, spin, plan)

    def featurize(self, graph: NeighborGraph, positions: torch.Tensor, atomic_numbers: torch.Tensor,
                  cell: torch.Tensor, pbc: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor,
                  plan: CellPlan) -> Tuple[torch.Tensor, BlockInputs]:
        """``prepare`` from a given graph (parameter-free geometry aside from the input block)."""
        n_atoms, n_slots = graph.src_env.shape
        distance = safe_norm(graph.edge_disp)
        directions = unit_vectors(graph.edge_disp)
        harmonics = self.harmonics(directions)
        gauss_index, gauss_value = gaussian_window(distance, self.distance_offsets, 20, self.gaussian_grid)
        edge_harmonics = harmonics[:, :(self.edge_lmax + 1) * (self.edge_lmax + 1)]
        if self.smooth_node_order:
            edge_weight = torch.exp(self.attention_bias(graph.edge_env))
        else:  # 1 on every kept edge (0 on the pairs a molecule's fixed-shape graph masks)
            edge_weight = (graph.edge_env < 1.0).to(distance.dtype)
        order = bond_orientational_order(harmonics, edge_weight, graph.edge_center, n_atoms,
                                         self.order_lmax)
        x = self.input_block(atomic_numbers, charge, spin, order, gauss_index, gauss_value,
                             edge_harmonics, graph.edge_center, graph.edge_slot, n_slots)

        src_bias = self.attention_bias(graph.src_env).to(x.dtype)
        dst_bias = self.attention_bias(graph.dst_env).to(x.dtype)
        empty = torch.empty(0, dtype=x.dtype, device=x.device)
        src_angles, dst_angles = empty, empty
        if self.use_freq_mask:  # from each slot's edge direction, in both layouts
            slot_directions = scatter_to_slots(directions, graph.edge_slot, n_atoms * n_slots, 0.0).view(
                n_atoms, n_slots, 3)
            dst_directions = gather_slots(slot_directions, graph.to_dst)
            if self.slot_kernel_applies(n_atoms):  # the kernel makes the table itself
                src_angles, dst_angles = slot_directions, dst_directions
            else:
                src_angles = legendre_weights(slot_directions, self.frequency_blocks)
                dst_angles = legendre_weights(dst_directions, self.frequency_blocks)
        sines = empty
        sine_index = torch.empty(0, dtype=torch.long, device=x.device)
        pairs = PairImages(empty.view(0, 3), empty.view(0, 3), empty.view(0, 3), empty,
                           torch.zeros(3, dtype=torch.long, device=x.device))
        if self.use_node_path and self.use_sincx_mask:
            pairs = pair_images(positions, cell, pbc, plan)
            if self.block_size == 0:
                sines = sine_kernels(pair_distances(pairs), self.sinc_omega)
                sine_index = pair_matrix_index(n_atoms, x.device)
        return x, BlockInputs(src_bias, dst_bias, graph.to_dst, graph.to_src, src_angles, dst_angles,
                              sines, sine_index, pairs)

    def forward(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor,
                plan: Optional[CellPlan] = None) -> torch.Tensor:
        x, inputs = self.prepare(positions, atomic_numbers, cell, pbc, charge, spin, plan)
        for block in self.transformer_blocks:
            x = block(x, inputs, self.sinc_omega, self.block_size)
        return x[:, 0]

    def layer_states(self, x: torch.Tensor, inputs: BlockInputs
                     ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]], torch.Tensor]:
        """Forward through the blocks without autograd, keeping each block's input and node
        update (O(N) memory each): (inputs, updates, output)."""
        states: List[torch.Tensor] = []
        updates: List[Optional[torch.Tensor]] = []
        with torch.no_grad():
            for block in self.transformer_blocks:
                states.append(x)
                y = block.neighborhood(x, inputs, self.block_size)
                update = block.node_update(y, inputs, self.sinc_omega, self.block_size)
                updates.append(update)
                x = block.combine(y, update)
        return states, updates, x

    def pull_back(self, states: List[torch.Tensor], updates: List[Optional[torch.Tensor]],
                  inputs: BlockInputs, grad_output: torch.Tensor) -> List[torch.Tensor]:
        """Gradient of the last block's output, pulled back through every block (last first),
        each recomputed from its stored input: gradients with respect to the first state,
        src_bias, dst_bias, src_angles, dst_angles, pair positions and image offsets."""
        totals = [grad_output, torch.zeros_like(inputs.src_bias), torch.zeros_like(inputs.dst_bias),
                  torch.zeros_like(inputs.src_angles), torch.zeros_like(inputs.dst_angles),
                  torch.zeros_like(inputs.pairs.positions),
                  torch.zeros_like(inputs.pairs.offsets)]
        for layer in range(len(states) - 1, -1, -1):
            for index, block in enumerate(self.transformer_blocks):  # TorchScript: no reversed()
                if index == layer:
                    grads = block.backward_step(states[layer], updates[layer], inputs, self.sinc_omega,
                                                self.block_size, totals[0])
                    totals[0] = grads[0]
                    for slot in range(1, len(totals)):
                        totals[slot] = totals[slot] + grads[slot]
        return totals


class EnergyHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.node_norm = rms_norm(h)
        self.energy_ffn = two_layer_mlp(h, h * cfg.output_hidden_layer_multiplier, 1)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (N,) in normalised units."""
        return self.energy_ffn(self.node_norm(nodes)).squeeze(-1)


class DirectForceHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        h = cfg.hidden_size
        self.node_norm = rms_norm(h)
        self.force_ffn = two_layer_mlp(h, h * cfg.output_hidden_layer_multiplier, 3)

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:
        """Per-atom forces (N, 3) in normalised units."""
        return self.force_ffn(self.node_norm(nodes))


class AllScAIP(nn.Module):
    """Energy (eV), forces (eV/Angstrom) and virial (eV) of one system.

    The network predicts normalised energies; ``energy = raw * energy_scale +
    energy_shift + sum_atoms element_references[Z]``, the last two added in float64.
    Forces are -dE/dr (conserving models) or the direct head's output; the virial is
    -dE/d(strain) from a symmetric strain of positions and cell (conserving only).
    """

    __jit_ignored_attributes__ = ["config", "metadata", "compiled"]

    def __init__(self, cfg: ModelConfig, energy_scale: float = 1.0, energy_shift: float = 0.0,
                 force_scale: float = 1.0, stress_scale: float = 1.0,
                 element_references: torch.Tensor | None = None):
        super().__init__()
        self.config = cfg
        self.metadata: dict = {}
        self.compiled = None  # allscaip.compiled.CompiledEnergy, for eager callers (see compile_network)
        self.use_compiled = False
        self.backbone = Backbone(cfg)
        self.energy_head = EnergyHead(cfg)
        self.direct_forces = bool(cfg.direct_forces)
        self.force_head = DirectForceHead(cfg) if cfg.direct_forces else nn.Identity()
        self.energy_scale = float(energy_scale)
        self.energy_shift = float(energy_shift)
        self.force_scale = float(force_scale)
        self.stress_scale = float(stress_scale)
        self.max_atomic_number = int(cfg.max_num_elements) - 1
        if element_references is None:
            element_references = torch.zeros(cfg.max_num_elements, dtype=torch.float64)
        # float64 whatever the network's dtype (see _apply): never round large offsets.
        self.register_buffer("element_references", element_references.to(torch.float64))
        onset, strength = repulsion_tables(list(cfg.repulsion), cfg.max_num_elements)
        self.register_buffer("repulsion_onset", onset, persistent=False)
        self.register_buffer("repulsion_strength", strength, persistent=False)
        self.repulsion_radius = max([float(entry[2]) for entry in cfg.repulsion] + [0.0])

    def _apply(self, fn, recurse=True):
        """Move like the rest of the module, but keep element references in float64."""
        references = self.element_references
        super()._apply(fn, recurse)
        device = fn(torch.zeros(0, device=references.device)).device
        self.element_references = references.to(device)
        return self

    @torch.jit.unused
    def compile_network(self) -> "AllScAIP":
        """Run the energy through ``torch.compile`` (inductor) in inference with conserving
        forces: the whole call for a molecule, the attention blocks and energy head for a
        periodic system. Falls back to eager with a warning where compilation fails. See
        ``allscaip.compiled``."""
        from allscaip.compiled import CompiledEnergy

        self.compiled = CompiledEnergy(self)
        self.use_compiled = True
        return self

    @torch.jit.unused
    def compiled_energy_and_gradients(self, positions: torch.Tensor, strain: torch.Tensor,
                                      atomic_numbers: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor,
                                      charge: torch.Tensor, spin: torch.Tensor, plan: CellPlan,
                                      inputs: List[torch.Tensor]) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """Raw energy of the strained system and its gradients with respect to ``inputs``
        through ``compile_network``'s compiled code (eager only)."""
        return self.compiled.energy_and_gradients(positions, strain, atomic_numbers, cell, pbc, charge, spin,
                                                  plan, inputs)

    def network_energy(self, x: torch.Tensor, inputs: BlockInputs) -> torch.Tensor:
        """Raw (normalised) energy from the initial slot states and the blocks' other inputs:
        the attention blocks and the energy head, the part ``compile_network`` compiles."""
        backbone = self.backbone
        for block in backbone.transformer_blocks:
            x = block(x, inputs, backbone.sinc_omega, backbone.block_size)
        return self.energy_head(x[:, 0]).sum()

    def set_node_attention_block_size(self, size: int) -> "AllScAIP":
        """Switch node attention between dense (0) and query blocks of ``size`` atoms."""
        self.config.node_attention_block_size = int(size)
        self.config.validate()
        self.backbone.block_size = int(size)
        return self

    def check_inputs(self, positions: torch.Tensor, atomic_numbers: torch.Tensor,
                     cell: torch.Tensor, pbc: torch.Tensor) -> None:
        if positions.dim() != 2 or positions.shape[1] != 3:
            raise ValueError("positions must have shape (N, 3)")
        if atomic_numbers.shape[0] != positions.shape[0]:
            raise ValueError("atomic_numbers and positions must have the same length")
        if positions.shape[0] == 0:
            raise ValueError("the system has no atoms")
        highest = min(self.max_atomic_number, self.element_references.shape[0] - 1)
        unsupported = (atomic_numbers < 1) | (atomic_numbers > highest)
        no_volume = pbc.any() & (torch.det(cell.detach()).abs() < 1e-6)
        if bool(unsupported.any() | no_volume):  # one host sync; diagnose only on failure
            if bool(unsupported.any()):
                raise ValueError("unsupported atomic number " + str(int(atomic_numbers[unsupported][0].item()))
                                 + ": this model supports Z = 1.." + str(highest))
            raise ValueError("a periodic system needs a cell with non-zero volume")

    def recomputing_gradients(self, positions: torch.Tensor, atomic_numbers: torch.Tensor,
                              cell: torch.Tensor, pbc: torch.Tensor, charge: torch.Tensor,
                              spin: torch.Tensor, inputs: List[torch.Tensor], plan: CellPlan
                              ) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """Raw energy and its gradients with respect to ``inputs`` with blocked node attention,
        storing only each block's input: blocks (and node-attention query blocks) are
        recomputed in the backward pass, so memory grows ~linearly in N. Not double
        differentiable (training uses the plain autograd path)."""
        x, block_inputs = self.backbone.prepare(positions, atomic_numbers, cell, pbc, charge, spin, plan)
        states, updates, final = self.backbone.layer_states(x, block_inputs)
        final = final.detach().requires_grad_(True)
        raw_energy = self.energy_head(final[:, 0]).sum()
        seed = gradients([raw_energy], [final], [torch.ones_like(raw_energy)])[0]
        pulled = self.backbone.pull_back(states, updates, block_inputs, seed)
        ends = [x, block_inputs.src_bias, block_inputs.dst_bias, block_inputs.src_angles, block_inputs.dst_angles,
                block_inputs.pairs.positions, block_inputs.pairs.offsets]
        outputs: List[torch.Tensor] = []
        seeds: List[torch.Tensor] = []
        for end, grad in zip(ends, pulled):
            if end.requires_grad:
                outputs.append(end)
                seeds.append(grad)
        found = gradients(outputs, inputs, seeds) if len(outputs) > 0 else [torch.zeros_like(t) for t in inputs]
        grads: List[Optional[torch.Tensor]] = []
        for grad in found:
            grads.append(grad)
        return raw_energy.detach(), grads

    def repulsion(self, wrapped: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                  pbc: torch.Tensor, strain: torch.Tensor, plan: CellPlan, inputs: List[torch.Tensor]
                  ) -> Tuple[torch.Tensor, List[Optional[torch.Tensor]]]:
        """The repulsive wall's energy (eV) and its gradients with respect to ``inputs`` (the
        wrapped positions and strain leaves), from its own strained copy of the system."""
        positions, strained_cell = apply_strain(wrapped, cell, strain)
        energy = repulsion_energy(positions, atomic_numbers, strained_cell, pbc, plan, self.repulsion_onset,
                                  self.repulsion_strength, self.repulsion_radius)
        grads: List[Optional[torch.Tensor]] = []
        if len(inputs) > 0:
            grads = torch.autograd.grad([energy], inputs, create_graph=self.training, allow_unused=True)
        return energy, grads

    def forward(self, positions: torch.Tensor, atomic_numbers: torch.Tensor, cell: torch.Tensor,
                pbc: torch.Tensor, charge: torch.Tensor, spin: torch.Tensor,
                compute_forces: bool = True, compute_virial: bool = False, check_inputs: bool = True
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """positions (N,3) Angstrom, atomic_numbers (N,) int64, cell (3,3) Angstrom (rows),
        pbc (3,) bool, charge and spin () int64. ``check_inputs=False`` skips the element and
        cell checks (a host sync each call), for callers that checked once
        (``allscaip.evaluator.Evaluator``).

        Returns energy () float64 eV, forces (N,3) eV/Angstrom (empty if not computed),
        virial (3,3) eV (empty if not computed).
        """
        if check_inputs:
            self.check_inputs(positions, atomic_numbers, cell, pbc)
        plan = self.backbone.cell_plan(cell, pbc)
        wrapped = wrap_positions(positions, cell, pbc, plan.periodic)
        conserving = not self.direct_forces
        strain = torch.zeros((3, 3), dtype=positions.dtype, device=positions.device)
        inputs: List[torch.Tensor] = []
        if conserving and (compute_forces or compute_virial):
            wrapped = wrapped.detach().requires_grad_(True)
            inputs.append(wrapped)
            if compute_virial:
                strain.requires_grad_(True)
                inputs.append(strain)
        strained_positions, strained_cell = apply_strain(wrapped, cell, strain)

        grads: List[Optional[torch.Tensor]] = []
        nodes = torch.empty(0, dtype=positions.dtype, device=positions.device)
        if self.backbone.block_size > 0 and not self.training:
            if len(inputs) > 0:
                raw_energy, grads = self.recomputing_gradients(
                    strained_positions, atomic_numbers, strained_cell, pbc, charge, spin, inputs, plan)
            else:
                with torch.no_grad():
                    nodes = self.backbone(strained_positions, atomic_numbers, strained_cell, pbc, charge, spin,
                                          plan)
                    raw_energy = self.energy_head(nodes).sum()
        elif self.use_compiled and conserving and not self.training and not torch.jit.is_scripting():
            raw_energy, grads = self.compiled_energy_and_gradients(wrapped, strain, atomic_numbers, cell, pbc,
                                                                   charge, spin, plan, inputs)
        else:
            nodes = self.backbone(strained_positions, atomic_numbers, strained_cell, pbc, charge, spin, plan)
            raw_energy = self.energy_head(nodes).sum()
            if len(inputs) > 0:
                grads = torch.autograd.grad([raw_energy], inputs, create_graph=self.training)

        forces = torch.empty(0, dtype=positions.dtype, device=positions.device)
        virial = torch.empty(0, dtype=positions.dtype, device=positions.device)
        if conserving and len(inputs) > 0:
            d_wrapped = grads[0]
            if compute_forces and d_wrapped is not None:
                forces = -self.force_scale * d_wrapped
            if compute_virial:
                d_strain = grads[1]
                if d_strain is not None:
                    virial = -self.stress_scale * d_strain
        elif compute_forces:
            forces = self.force_scale * self.force_head(nodes)

        energy = (raw_energy * self.energy_scale + self.energy_shift).to(torch.float64)
        energy = energy + self.element_references[atomic_numbers].sum()
        if self.repulsion_radius > 0.0:
            wall, wall_grads = self.repulsion(wrapped, atomic_numbers, cell, pbc, strain, plan, inputs)
            energy = energy + wall.to(torch.float64)
            if len(inputs) > 0:
                d_wall = wall_grads[0]
                if compute_forces and d_wall is not None:
                    forces = forces - d_wall
                if compute_virial:
                    d_wall_strain = wall_grads[1]
                    if d_wall_strain is not None:
                        virial = virial - d_wall_strain
        return energy, forces, virial
