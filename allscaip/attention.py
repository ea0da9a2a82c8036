"""Attention layers: neighbourhood attention over each atom's slots (source, then
destination layout) and node attention over all atoms of the system.

Parameter names follow fairchem's AllScAIP so its state dicts load unchanged.
"""

import math
from typing import List, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from allscaip.features import node_attention_bias, node_attention_log_weight, sine_kernels
from allscaip.graph import PairImages, minimum_image_distances


# below this many atoms the fused slot-attention kernel's fixed cost per call outweighs it
# (one water: 1.8 against 1.4 ms per compiled call; 64 waters: 0.87x the time)
SLOT_KERNEL_MIN_ATOMS = 32


def compiling() -> bool:
    """Whether ``torch.compile`` is tracing this call (False under TorchScript)."""
    if torch.jit.is_scripting():
        return False
    else:
        return torch.compiler.is_compiling()


def rms_norm(size: int) -> nn.RMSNorm:
    """RMSNorm with fairchem's effective eps: it builds ``nn.RMSNorm(eps=None)`` and runs in
    float32, where eps = finfo(float32).eps. Pinning that value makes our float64 model
    compute the same function as the released float32 one."""
    return nn.RMSNorm(size, eps=torch.finfo(torch.float32).eps)


def gradients(outputs: List[torch.Tensor], inputs: List[torch.Tensor],
              grad_outputs: List[torch.Tensor]) -> List[torch.Tensor]:
    """torch.autograd.grad keeping the graph, with zeros for inputs that do not matter."""
    seeds: List[Optional[torch.Tensor]] = []
    for seed in grad_outputs:
        seeds.append(seed)
    found = torch.autograd.grad(outputs, inputs, seeds, retain_graph=True, allow_unused=True)
    result: List[torch.Tensor] = []
    for grad, tensor in zip(found, inputs):
        result.append(torch.zeros_like(tensor) if grad is None else grad)
    return result


class AttentionProjections(nn.Module):
    """q/k/v input projections and the output projection of multi-head attention."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.attn_in_proj_q = nn.Linear(hidden_size, hidden_size)
        self.attn_in_proj_k = nn.Linear(hidden_size, hidden_size)
        self.attn_in_proj_v = nn.Linear(hidden_size, hidden_size)
        self.attn_out_proj = nn.Linear(hidden_size, hidden_size)
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H) -> (B, heads, L, head_dim)."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).permute(0, 2, 1, 3)

    @torch.jit.export
    def project(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, H) -> q, k, v each (B, heads, L, head_dim)."""
        return (self.split_heads(self.attn_in_proj_q(x)), self.split_heads(self.attn_in_proj_k(x)),
                self.split_heads(self.attn_in_proj_v(x)))

    @torch.jit.export
    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               bias: Optional[torch.Tensor]) -> torch.Tensor:
        """Softmax attention scaled by 1/sqrt(head_dim); (B, heads, L, .) -> (B, L, H)."""
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             scale=1.0 / math.sqrt(self.head_dim))
        out = out.permute(0, 2, 1, 3).reshape(v.shape[0], q.shape[2], self.num_heads * self.head_dim)
        return self.attn_out_proj(out)

    @torch.jit.export
    def attend_scores(self, scores: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``attend`` given the raw q . k scores (B, heads, L, L) -> (B, L, H)."""
        weights = torch.softmax(scores * (1.0 / math.sqrt(self.head_dim)) + bias, dim=-1)
        out = torch.matmul(weights, v).permute(0, 2, 1, 3)
        return self.attn_out_proj(out.reshape(v.shape[0], scores.shape[2], self.num_heads * self.head_dim))


def legendre_weights(directions: torch.Tensor, count: int) -> torch.Tensor:
    """P_l(u_a . u_b) for l = 0..count-1 between the edge directions of every two slots of a
    row: (B, P, 3) -> (B, count, P, P). Written as polynomials homogeneous in each vector, so
    a zero vector (the atom's own slot, empty slots) weighs l = 0 by 1 and l > 0 by 0.
    Geometry only: computed once per layout and shared by every block."""
    dots = torch.matmul(directions, directions.transpose(1, 2))
    squared = directions.square().sum(dim=-1)
    norms = squared.unsqueeze(2) * squared.unsqueeze(1)
    weights: List[torch.Tensor] = [torch.ones_like(dots), dots]
    for l in range(1, count - 1):
        weights.append(((2 * l + 1) * dots * weights[l] - l * norms * weights[l - 1]) / (l + 1))
    return torch.stack(weights[:count], dim=1)


class NeighborhoodAttention(nn.Module):
    """Self-attention among an atom's neighbour slots, first grouped by source atom,
    then by destination atom, each a pre-norm residual update.

    Each layout comes with a bias (B, P) and, with the frequency mask, the Legendre weights
    of its slots' edge directions (B, L, P, P) (``legendre_weights``; else empty)."""

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int,
                 frequency_repeats: List[int], use_freq_mask: bool, use_residual_scaling: bool):
        super().__init__()
        self.src_attn = AttentionProjections(hidden_size, num_heads)
        self.dst_attn = AttentionProjections(hidden_size, num_heads)
        self.src_attn_norm = rms_norm(hidden_size)
        self.dst_attn_norm = rms_norm(hidden_size)
        scale = 1.0 / num_layers if use_residual_scaling else 1.0
        self.src_attn_res_scale = nn.Parameter(torch.tensor(scale), requires_grad=use_residual_scaling)
        self.dst_attn_res_scale = nn.Parameter(torch.tensor(scale), requires_grad=use_residual_scaling)
        self.use_freq_mask = use_freq_mask
        self.frequency_repeats = frequency_repeats

    def modulated_scores(self, q: torch.Tensor, k: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        """Frequency-modulated q . k of every two slots (B, heads, P, P).

        fairchem tiles channel block l of q and k 2l+1 times and multiplies them by each
        slot's Y_lm / sqrt(2l+1) before the dot product; by the addition theorem that is the
        block's plain dot product times P_l of the angle between the two slots' edges
        (``angles``), which needs no tiled (B, heads, P, sum (2l+1) repeats) copies."""
        repeats = self.frequency_repeats
        if min(repeats) == max(repeats):  # equal blocks: one batched product for all l
            n_rows, n_heads, n_slots = q.shape[0], q.shape[1], q.shape[2]
            blocks = len(repeats)
            q_blocks = q.reshape(n_rows, n_heads, n_slots, blocks, repeats[0]).transpose(2, 3)
            k_blocks = k.reshape(n_rows, n_heads, n_slots, blocks, repeats[0]).permute(0, 1, 3, 4, 2)
            return (torch.matmul(q_blocks, k_blocks) * angles.unsqueeze(1)).sum(dim=2)
        scores = torch.zeros(q.shape[0], q.shape[1], q.shape[2], k.shape[2], dtype=q.dtype, device=q.device)
        start = 0
        for l, count in enumerate(repeats):
            if count > 0:
                block = torch.matmul(q[..., start:start + count], k[..., start:start + count].transpose(2, 3))
                scores = scores + block * angles[:, l].unsqueeze(1)
                start += count
        return scores

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
               angles: torch.Tensor, source: bool) -> torch.Tensor:
        """Attention of projected slots (B, heads, P, d), frequency-modulated if enabled,
        through the source or destination output projection: (B, P, H)."""
        mask = bias[:, None, None, :]
        if angles.dim() == 3:  # the slots' edge directions: the fused kernel (Backbone.slot_kernel_applies)
            return self.fused_attend(q, k, v, bias, angles, source)
        if self.use_freq_mask:
            scores = self.modulated_scores(q, k, angles)
            if source:  # TorchScript cannot pick a submodule by value
                return self.src_attn.attend_scores(scores, v, mask)
            return self.dst_attn.attend_scores(scores, v, mask)
        if source:
            return self.src_attn.attend(q, k, v, mask)
        return self.dst_attn.attend(q, k, v, mask)

    @torch.jit.unused
    def fused_attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     directions: torch.Tensor, source: bool) -> torch.Tensor:
        """``attend`` through the fused kernel of ``allscaip.slot_kernel`` (the frequency mask with
        equal blocks, on CPU), which makes the Legendre table from the slots' edge directions
        (B, P, 3) itself; the same function as the other branches."""
        from allscaip.slot_kernel import slot_attention

        projections = self.src_attn if source else self.dst_attn
        out = slot_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), directions, bias,
                             len(self.frequency_repeats),
                             1.0 / math.sqrt(projections.head_dim))  # the projections' layout: no copies
        return projections.attn_out_proj(out.reshape(v.shape[0], q.shape[2], projections.num_heads * projections.head_dim))

    def update(self, x: torch.Tensor, bias: torch.Tensor, angles: torch.Tensor,
               source: bool) -> torch.Tensor:
        """One pre-norm residual attention over the slots of each row (source or destination
        layout); rows are independent: (B, P, H) -> (B, P, H)."""
        if source:
            q, k, v = self.src_attn.project(self.src_attn_norm(x))
            return x + self.src_attn_res_scale * self.attend(q, k, v, bias, angles, True)
        q, k, v = self.dst_attn.project(self.dst_attn_norm(x))
        return x + self.dst_attn_res_scale * self.attend(q, k, v, bias, angles, False)

    def chunked_update(self, x: torch.Tensor, bias: torch.Tensor, angles: torch.Tensor,
                       source: bool, chunk: int) -> torch.Tensor:
        """``update`` on chunks of ``chunk`` rows (all at once if chunk is 0)."""
        if chunk <= 0 or chunk >= x.shape[0]:
            return self.update(x, bias, angles, source)
        return torch.cat([self.update(x[start:start + chunk], bias[start:start + chunk],
                                      self.rows(angles, start, start + chunk), source)
                          for start in range(0, x.shape[0], chunk)])

    def rows(self, angles: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        return angles[start:stop] if self.use_freq_mask else angles

    def halfway(self, x: torch.Tensor, src_bias: torch.Tensor, to_dst: torch.Tensor,
                src_angles: torch.Tensor, chunk: int) -> torch.Tensor:
        """Source attention, then the states in the destination layout."""
        return gather_slots(self.chunked_update(x, src_bias, src_angles, True, chunk), to_dst)

    def finish(self, middle: torch.Tensor, dst_bias: torch.Tensor, to_src: torch.Tensor,
               dst_angles: torch.Tensor, chunk: int) -> torch.Tensor:
        """Destination attention, then back to the source layout."""
        return gather_slots(self.chunked_update(middle, dst_bias, dst_angles, False, chunk), to_src)

    def forward(self, x: torch.Tensor, src_bias: torch.Tensor, dst_bias: torch.Tensor,
                to_dst: torch.Tensor, to_src: torch.Tensor, src_angles: torch.Tensor,
                dst_angles: torch.Tensor, chunk: int = 0) -> torch.Tensor:
        """x: (N, P, H) in the source layout; chunk > 0 bounds the rows attended at once
        (same result)."""
        middle = self.halfway(x, src_bias, to_dst, src_angles, chunk)
        return self.finish(middle, dst_bias, to_src, dst_angles, chunk)

    def chunked_vjp(self, x: torch.Tensor, middle: torch.Tensor, src_bias: torch.Tensor,
                    dst_bias: torch.Tensor, to_dst: torch.Tensor, to_src: torch.Tensor,
                    src_angles: torch.Tensor, dst_angles: torch.Tensor,
                    grad_output: torch.Tensor, chunk: int) -> List[torch.Tensor]:
        """Gradients of sum(grad_output * forward(x)) with respect to x, src_bias, dst_bias,
        src_angles and dst_angles, given ``halfway``'s output; ``chunk`` rows recomputed at a
        time."""
        grad_middle, grad_dst_bias, grad_dst_angles = self.rowwise_vjp(
            middle, dst_bias, dst_angles, False, scatter_slots(grad_output, to_src), chunk)
        grad_x, grad_src_bias, grad_src_angles = self.rowwise_vjp(
            x, src_bias, src_angles, True, scatter_slots(grad_middle, to_dst), chunk)
        return [grad_x, grad_src_bias, grad_dst_bias, grad_src_angles, grad_dst_angles]

    def rowwise_vjp(self, x: torch.Tensor, bias: torch.Tensor, angles: torch.Tensor, source: bool,
                    grad_output: torch.Tensor, chunk: int) -> List[torch.Tensor]:
        """Pull grad_output back through ``update`` chunk by chunk: grads of x, bias, angles."""
        parts: List[List[torch.Tensor]] = [[], [], []]
        step = chunk if chunk > 0 else x.shape[0]
        for start in range(0, x.shape[0], step):
            leaves = [x[start:start + step].detach().requires_grad_(True),
                      bias[start:start + step].detach().requires_grad_(True),
                      self.rows(angles, start, start + step).detach().requires_grad_(True)]
            out = self.update(leaves[0], leaves[1], leaves[2], source)
            grads = gradients([out], leaves, [grad_output[start:start + step]])
            for index in range(3):
                parts[index].append(grads[index])
        if not self.use_freq_mask:
            parts[2] = [torch.zeros_like(angles)]
        return [torch.cat(part) for part in parts]


def gather_slots(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(N, P, C) -> (N, P, C) with flat slot s taken from flat slot index[s]."""
    n_atoms, n_slots = values.shape[0], values.shape[1]
    return torch.index_select(values.reshape(n_atoms * n_slots, -1), 0, index).reshape(values.shape)


def scatter_slots(grad: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Adjoint of ``gather_slots``: gradient with respect to its input."""
    n_atoms, n_slots = grad.shape[0], grad.shape[1]
    flat = grad.reshape(n_atoms * n_slots, -1)
    return torch.zeros_like(flat).index_add(0, index, flat).reshape(grad.shape)


class NodeAttention(AttentionProjections):
    """Attention of every atom over all atoms of the system (no images), optionally
    biased by learned mixtures of sinc kernels of the minimum-image distance.

    Dense (fairchem's): the (N, N, K) kernels of all pairs at once. Blocked: query rows in
    blocks, each block's distances and bias computed on the fly (memory O(block * N)); the
    backward pass can recompute blocks instead of storing them (``blocked_vjp``).
    """

    def __init__(self, hidden_size: int, num_heads: int, num_layers: int, num_frequencies: int,
                 use_sincx_mask: bool, use_residual_scaling: bool):
        super().__init__(hidden_size, num_heads)
        self.node_norm = rms_norm(hidden_size)
        scale = 1.0 / num_layers if use_residual_scaling else 1.0
        self.node_attn_res_scale = nn.Parameter(torch.tensor(scale), requires_grad=use_residual_scaling)
        self.use_sincx_mask = use_sincx_mask
        if use_sincx_mask:
            self.radial_weight = nn.Parameter(torch.full((num_heads, num_frequencies), 1.0 / num_frequencies))
        else:
            self.register_buffer("radial_weight", torch.empty(0), persistent=False)

    def sine_weight(self, omega: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Radial weights over the frequencies (``sine_kernels`` / omega are the sinc kernels)."""
        return self.radial_weight.to(dtype) / omega.to(dtype)

    def attention(self, x: torch.Tensor, sines: torch.Tensor, sine_index: torch.Tensor,
                  omega: torch.Tensor) -> torch.Tensor:
        """Dense attention update (N, H) without the residual; sines: (N (N-1)/2, K) pair kernels
        and sine_index (N * N,) (see ``node_attention_bias``), or empty."""
        q, k, v = self.project(self.node_norm(x).unsqueeze(0))
        bias: Optional[torch.Tensor] = None
        if self.use_sincx_mask:
            bias = self.pair_bias(sines, sine_index, omega, x.shape[0]).unsqueeze(0).to(q.dtype)
        return self.attend(q, k, v, bias).squeeze(0)

    def pair_bias(self, sines: torch.Tensor, sine_index: torch.Tensor, omega: torch.Tensor,
                  n_atoms: int) -> torch.Tensor:
        """Sinc bias (..., heads, N, N) of systems of N atoms from their pair kernels (..., M, K)."""
        return node_attention_bias(sines, omega, self.sine_weight(omega, sines.dtype), sine_index, n_atoms)

    def block_bias(self, pairs: PairImages, omega: torch.Tensor, start: int, stop: int,
                   dtype: torch.dtype) -> Optional[torch.Tensor]:
        """(1, heads, B, N) bias of query rows [start, stop), or None without the sinc mask."""
        if not self.use_sincx_mask:
            return None
        sines = sine_kernels(minimum_image_distances(pairs, start, stop), omega)
        return node_attention_log_weight(sines, self.sine_weight(omega, sines.dtype)).unsqueeze(0).to(dtype)

    def attend_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pairs: PairImages,
                    omega: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Attention update (B, H) of query rows [start, stop); q, k, v: (1, heads, N, d)."""
        bias = self.block_bias(pairs, omega, start, stop, q.dtype)
        return self.attend(q[:, :, start:stop], k, v, bias).squeeze(0)

    def blocked_attention(self, x: torch.Tensor, pairs: PairImages, omega: torch.Tensor,
                          block_size: int) -> torch.Tensor:
        """``attention`` in query blocks of ``block_size`` atoms: (N, H)."""
        q, k, v = self.project(self.node_norm(x).unsqueeze(0))
        n_atoms = x.shape[0]
        return torch.cat([self.attend_rows(q, k, v, pairs, omega, start, min(start + block_size, n_atoms))
                          for start in range(0, n_atoms, block_size)])

    def blocked_vjp(self, x: torch.Tensor, pairs: PairImages, omega: torch.Tensor, block_size: int,
                    grad_output: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gradients of sum(grad_output * blocked_attention(x)) with respect to x, pair
        positions and image offsets, recomputing one query block at a time (no O(N^2) storage)."""
        x = x.detach().requires_grad_(True)
        positions = pairs.positions.detach().requires_grad_(True)
        offsets = pairs.offsets.detach().requires_grad_(True)
        leaves = PairImages(positions, offsets, pairs.inverse, pairs.periodic, pairs.strides)
        q_graph, k_graph, v_graph = self.project(self.node_norm(x).unsqueeze(0))
        q = q_graph.detach().requires_grad_(True)
        k = k_graph.detach().requires_grad_(True)
        v = v_graph.detach().requires_grad_(True)
        totals = [torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v),
                  torch.zeros_like(positions), torch.zeros_like(offsets)]
        n_atoms = x.shape[0]
        for start in range(0, n_atoms, block_size):
            stop = min(start + block_size, n_atoms)
            rows = self.attend_rows(q, k, v, leaves, omega, start, stop)
            grads = gradients([rows], [q, k, v, positions, offsets], [grad_output[start:stop]])
            for index in range(len(totals)):
                totals[index] = totals[index] + grads[index]
        grad_x = gradients([q_graph, k_graph, v_graph], [x], totals[:3])[0]
        return grad_x, totals[3], totals[4]
