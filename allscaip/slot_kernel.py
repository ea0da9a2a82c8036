"""A fused CPU kernel for the frequency-masked attention over each atom's slots, used by the
compiled path (``compile=True``) in place of its many small batched products and softmax kernels.

``slot_attention(q, k, v, directions, bias, blocks, scale)`` computes what
``NeighborhoodAttention`` does between its projections: the block-wise q . k products weighted by
the Legendre table of the slots' edge directions (made inside, never stored), scaled, biased, the
softmax over the slots and the product with v, with a backward pass of its own (gradients for q,
k, v, the directions and the bias). The C++ source (``slot_attention.cpp``) is compiled on
first use with torch's extension builder (cached, one build per CPU instruction set) and
registered as the operator ``allscaip_kernels::slot_attention``, which ``torch.compile`` keeps as
one call. Where it cannot be built (no compiler), ``available()`` warns once and the compiled
path keeps inductor's kernels.
"""

from __future__ import annotations

import hashlib
import platform
import threading
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("slot_attention.cpp")
FLAGS = ["-O3", "-march=native", "-fopenmp"]
MAX_HEAD_DIM = 256  # channels per head the kernel takes (MAX_DIM in slot_attention.cpp)
_state: dict = {"loaded": None}
_lock = threading.Lock()


def _register() -> None:
    """Output shapes of the built operators, for tracing."""

    @torch.library.register_fake("allscaip_kernels::slot_attention")
    def _(q, k, v, directions, bias, blocks, scale):
        lanes = 8  # the softmax weights in the kernel's lane layout (LANES in slot_attention.cpp)
        return q.new_empty(q.shape), q.new_empty(((q.shape[0] + lanes - 1) // lanes, q.shape[2], q.shape[1], q.shape[1],
                                                  lanes))

    @torch.library.register_fake("allscaip_kernels::slot_attention_backward")
    def _(q, k, v, directions, probs, grad_out, blocks, scale):
        return (q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape), directions.new_empty(directions.shape),
                q.new_empty((q.shape[0], q.shape[1])))


class SlotAttention(torch.autograd.Function):
    """The operator with its backward pass. ``setup_context`` makes it usable inside
    ``torch.func`` transforms (the compiled path takes forces with ``grad_and_value``)."""

    @staticmethod
    def forward(q, k, v, directions, bias, blocks, scale):
        return torch.ops.allscaip_kernels.slot_attention(q, k, v, directions, bias, blocks, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, directions, _, blocks, scale = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(q, k, v, directions, output[1])
        ctx.blocks, ctx.scale = blocks, scale

    @staticmethod
    def backward(ctx, grad_out, grad_probs):
        q, k, v, directions, probs = ctx.saved_tensors
        grads = torch.ops.allscaip_kernels.slot_attention_backward(q, k, v, directions, probs, grad_out, ctx.blocks,
                                                                   ctx.scale)
        return (*grads, None, None)


def build_name() -> str:
    """The extension's name, one per instruction set: it is compiled with ``-march=native``, and a
    build cache shared by machines of another CPU kind must not hand them a build they cannot run."""
    try:
        with open("/proc/cpuinfo") as handle:
            features = next((line for line in handle if line.startswith(("flags", "Features"))), "")
    except OSError:
        features = ""
    features = features or platform.machine() + platform.processor()
    return "allscaip_slot_attention_" + hashlib.sha1(features.encode()).hexdigest()[:12]


def available() -> bool:
    """Whether the fused kernel is built and registered (building it on the first call; a
    failure warns once and returns False from then on)."""
    with _lock:
        if _state["loaded"] is None:
            try:
                from torch.utils.cpp_extension import load

                load(name=build_name(), sources=[str(SOURCE)], extra_cflags=FLAGS,
                     extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
                _register()
                _state["loaded"] = True
            except Exception as error:  # noqa: BLE001 -- no compiler, headers, ...: say why, go on without
                _state["loaded"] = False
                reason = (str(error).strip().splitlines() or [""])[-1]
                warnings.warn(f"the fused slot-attention kernel could not be built ({type(error).__name__}: "
                              f"{reason}); the compiled path keeps inductor's kernels", RuntimeWarning, stacklevel=2)
        return bool(_state["loaded"])


@torch._dynamo.allow_in_graph  # traced as a call, not into: dynamo cannot nest it in torch.func
def slot_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, directions: torch.Tensor, bias: torch.Tensor,
                   blocks: int, scale: float) -> torch.Tensor:
    """softmax(scale * sum_l A_l * (q_l k_l^T) + bias) v per row and head, for q, k, v
    (rows, slots, heads, dim), the slots' edge directions (rows, slots, 3), whose
    ``legendre_weights(directions, blocks)`` are A, and bias (rows, slots): (rows, slots, heads, dim)."""
    return SlotAttention.apply(q, k, v, directions, bias, blocks, scale)[0]
