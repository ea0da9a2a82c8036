"""The fused slot-attention kernel (allscaip.slot_kernel) against the attention it replaces:
forward and every gradient, through autograd and torch.func, in float64 and float32."""

import warnings

import pytest
import torch

from allscaip import slot_kernel
from allscaip.attention import NeighborhoodAttention, legendre_weights

pytestmark = pytest.mark.skipif(not slot_kernel.available(), reason="the fused kernel could not be built here")


def reference(q, k, v, directions, bias, blocks, scale):
    """What NeighborhoodAttention computes between its projections, in the kernel's layout."""
    layer = NeighborhoodAttention(q.shape[2] * q.shape[3], q.shape[2], 1, [q.shape[3] // blocks] * blocks, True, False)
    scores = layer.modulated_scores(q.transpose(1, 2), k.transpose(1, 2), legendre_weights(directions, blocks))
    weights = torch.softmax(scores * scale + bias[:, None, None, :], dim=-1)
    return torch.matmul(weights, v.transpose(1, 2)).transpose(1, 2)


def inputs(rows, slots, heads, dim, dtype, seed=0):
    """Random projections, random edge directions of lengths near 1 (the graph's are unit
    vectors; other lengths test the table's homogeneous form), the own slot and the last two
    empty (zero direction, bias -inf, as the graph leaves them), and envelope-like biases."""
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(rows, slots, heads, dim, generator=generator, dtype=dtype) for _ in range(3))
    directions = torch.randn(rows, slots, 3, generator=generator, dtype=dtype)
    directions = directions / directions.norm(dim=-1, keepdim=True) * (1.0 + 0.1 * torch.rand(
        rows, slots, 1, generator=generator, dtype=dtype))
    directions[:, 0] = 0.0  # the atom's own slot
    directions[:, -2:] = 0.0
    bias = -torch.rand(rows, slots, generator=generator, dtype=dtype)
    bias[:, -2:] = float("-inf")
    return q, k, v, directions, bias


@pytest.mark.parametrize("rows,slots,heads,dim,blocks", [(13, 9, 2, 8, 4), (8, 21, 2, 16, 16), (3, 6, 1, 12, 3),
                                                         (9, 5, 2, 4, 1), (9, 5, 2, 4, 2), (10, 7, 2, 32, 4),
                                                         (10, 7, 1, 32, 1), (5, 6, 2, 48, 2)])
def test_forward_and_gradients_equal_the_attention_they_replace(rows, slots, heads, dim, blocks):
    """Row counts that fill no, one or several groups of vector lanes; 1-2 heads; 1-16 blocks
    (of 1-24 channels): every branch of the Legendre recurrence, heads of 16 and 32 channels
    (compile-time sizes, two chunks of 16 for 32) and of other sizes (run-time sizes)."""
    leaves = [t.requires_grad_(True) for t in inputs(rows, slots, heads, dim, torch.float64)]
    want = reference(*leaves, blocks, 0.3)
    got = slot_kernel.slot_attention(*leaves, blocks, 0.3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    seed = torch.randn_like(want)
    wanted = torch.autograd.grad(want, leaves, seed, allow_unused=True)  # one block: no use of the directions
    wanted = [torch.zeros_like(leaf) if g is None else g for g, leaf in zip(wanted, leaves)]
    for name, g_want, g_got in zip("q k v directions bias".split(), wanted, torch.autograd.grad(got, leaves, seed)):
        # round-off relative to the largest entry (the table's l = 15 term reaches 150 here)
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-13 * float(g_want.abs().max()), msg=name)


def test_gradients_inside_torch_func_and_in_float32():
    """The compiled path takes forces with torch.func.grad_and_value; float32 is what MD runs."""
    def loss(attention):
        return lambda *tensors: (attention(*tensors, 4, 0.25) ** 2).sum()

    tensors = inputs(11, 10, 2, 8, torch.float64, seed=1)
    want = torch.func.grad(loss(reference), argnums=(0, 1, 2, 3, 4))(*tensors)
    got = torch.func.grad(loss(slot_kernel.slot_attention), argnums=(0, 1, 2, 3, 4))(*tensors)
    for g_want, g_got in zip(want, got):
        torch.testing.assert_close(g_got, g_want, rtol=0, atol=1e-12)
    single = [t.float() for t in tensors]
    torch.testing.assert_close(slot_kernel.slot_attention(*single, 4, 0.25), reference(*single, 4, 0.25),
                               rtol=1e-5, atol=1e-5)


def test_inputs_of_the_wrong_shape_are_refused():
    q, k, v, directions, bias = inputs(4, 5, 2, 8, torch.float64)
    with pytest.raises(RuntimeError, match="bias must be \\(rows, slots\\)"):
        slot_kernel.slot_attention(q, k, v, directions, bias[:, :3], 4, 0.3)
    with pytest.raises(RuntimeError, match="blocks must be at least 1, dividing dim"):
        slot_kernel.slot_attention(q, k, v, directions, bias, 3, 0.3)
    with pytest.raises(RuntimeError, match="directions must be \\(rows, slots, 3\\)"):
        slot_kernel.slot_attention(q, k, v, directions[..., :2], bias, 4, 0.3)


def test_a_kernel_that_cannot_be_built_warns_once(monkeypatch):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise OSError("no C++ compiler")

    monkeypatch.setattr(torch.utils.cpp_extension, "load", no_compiler)
    monkeypatch.setitem(slot_kernel._state, "loaded", None)
    with pytest.warns(RuntimeWarning, match="could not be built .*no C\\+\\+ compiler.*keeps inductor's kernels"):
        assert not slot_kernel.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # decided: no second attempt, no second warning
        assert not slot_kernel.available()


def test_the_compiled_path_takes_the_kernel_only_for_heads_it_can_hold(monkeypatch):
    """The shipped model (16 channels per head) runs through the kernel; a limit below its
    head width keeps inductor's kernels (the kernel would refuse the call)."""
    from allscaip.io import load_model
    from allscaip.models import small_water_model_path

    for limit, expected in ((slot_kernel.MAX_HEAD_DIM, True), (8, False)):
        monkeypatch.setattr(slot_kernel, "MAX_HEAD_DIM", limit)
        model = load_model(str(small_water_model_path())).compile_network()
        model.compiled._prepare()
        assert model.compiled.slot_kernel is expected
        assert model.backbone.use_slot_kernel is expected
        assert model.backbone.slot_kernel_applies(64) is expected and not model.backbone.slot_kernel_applies(3)
