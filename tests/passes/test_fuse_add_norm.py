"""fuse_add_rms_norm: a residual add feeding trtllm.rms_norm becomes trtllm.add_rms_norm (normed, sum)."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.passes.fuse_add_norm import fuse_add_rms_norm

HIDDEN = 16
WEIGHT = 1 + 0.1 * torch.randn(HIDDEN)
EPS = 1e-6


def rms_norm(x, unit_offset=False):
    return torch.ops.trtllm.rms_norm(x, WEIGHT, EPS, unit_offset)


def _inputs(dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, HIDDEN, generator=gen).to(dtype) for _ in range(2))


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_residual_add_then_norm_is_fused(
    trace, run_pass, op_counts, call_args, assert_same_outputs, dtype, unit_offset
):
    def decoder_residual(residual, attn_out):
        hidden = residual + attn_out
        return rms_norm(hidden, unit_offset), hidden  # the normed input of the MLP, and the new residual

    args = _inputs(dtype)
    gm = trace(decoder_residual, *args)
    assert run_pass(fuse_add_rms_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.add_rms_norm": 1, "getitem": 2}
    (fused,) = call_args(gm, torch.ops.trtllm.add_rms_norm.default)
    assert (fused["eps"], fused["unit_offset"]) == (EPS, unit_offset)
    assert fused["x"].op == fused["residual"].op == "placeholder"
    assert_same_outputs(gm, decoder_residual, *args)


def test_every_layer_is_fused(trace, run_pass, op_counts, assert_same_outputs):
    def two_layers(residual, attn_out):
        hidden = residual + attn_out
        normed = rms_norm(hidden)
        hidden = hidden + normed * 2  # the next sublayer's output joins the residual stream
        return rms_norm(hidden)

    args = _inputs()
    gm = trace(two_layers, *args)
    assert run_pass(fuse_add_rms_norm, gm) == 2
    assert op_counts(gm)["trtllm.add_rms_norm"] == 2 and "aten.add" not in op_counts(gm)
    assert_same_outputs(gm, two_layers, *args)


@pytest.mark.parametrize(
    "other_shape, other_dtype",
    [((HIDDEN,), torch.float32), ((1, 3, HIDDEN), torch.float32), ((2, 3, HIDDEN), torch.bfloat16)],
    ids=["bias_broadcast", "batch_broadcast", "dtype_promotion"],
)
def test_add_that_is_not_a_residual_add_is_left_alone(trace, run_pass, op_counts, other_shape, other_dtype):
    def add_then_norm(x, other):
        return rms_norm(x + other)

    gm = trace(add_then_norm, _inputs()[0], torch.randn(other_shape).to(other_dtype))
    assert run_pass(fuse_add_rms_norm, gm) == 0
    assert op_counts(gm) == {"aten.add": 1, "trtllm.rms_norm": 1}


def test_add_with_alpha_is_left_alone(trace, run_pass, op_counts):
    def scaled_add(x, y):
        return rms_norm(torch.add(x, y, alpha=0.5))

    gm = trace(scaled_add, *_inputs())
    assert run_pass(fuse_add_rms_norm, gm) == 0
    assert op_counts(gm) == {"aten.add": 1, "trtllm.rms_norm": 1}


def test_add_of_a_scalar_is_left_alone(trace, run_pass, op_counts):
    gm = trace(lambda x: rms_norm(x + 1.0), _inputs()[0])
    assert run_pass(fuse_add_rms_norm, gm) == 0
    assert op_counts(gm) == {"aten.add": 1, "trtllm.rms_norm": 1}


def test_sum_used_before_the_norm_stays_in_order(trace, run_pass, op_counts, assert_same_outputs):
    def sum_used_early(residual, attn_out):
        hidden = residual + attn_out
        scaled = hidden * 2  # traced before the norm
        return rms_norm(hidden), scaled

    args = _inputs()
    gm = trace(sum_used_early, *args)
    assert run_pass(fuse_add_rms_norm, gm) == 1
    assert op_counts(gm)["trtllm.add_rms_norm"] == 1
    assert_same_outputs(gm, sum_used_early, *args)
