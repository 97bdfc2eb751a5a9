"""fuse_gemms: GEMMs reading one activation with frozen weights (Q/K/V, gate/up) become one sliced GEMM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtllm_compile.fx_utils import constant_of
from trtllm_compile.passes.fuse_gemms import fuse_gemms

HIDDEN = 16
X = torch.randn(2, 3, HIDDEN)
LINEAR = torch.ops.aten.linear.default


def _linears(*out_features, bias=False):
    torch.manual_seed(0)
    return [torch.nn.Linear(HIDDEN, n, bias=bias).eval() for n in out_features]


def test_gqa_projections_become_one_gemm(trace, run_pass, op_counts, call_args, assert_same_outputs):
    q_proj, k_proj, v_proj = _linears(16, 8, 8)  # GQA: K and V narrower than Q

    def qkv(x):
        return q_proj(x), k_proj(x), v_proj(x)

    gm = trace(qkv, X)
    assert run_pass(fuse_gemms, gm) == 1
    assert op_counts(gm) == {"aten.linear": 1, "aten.slice": 3}
    (fused,) = call_args(gm, LINEAR)
    weight = constant_of(gm, fused["weight"])
    torch.testing.assert_close(weight, torch.cat([q_proj.weight, k_proj.weight, v_proj.weight]).detach())
    assert fused["bias"] is None
    assert_same_outputs(gm, qkv, X)


def test_biases_are_concatenated_with_the_weights(trace, run_pass, op_counts, call_args, assert_same_outputs):
    q_proj, k_proj, v_proj = _linears(16, 8, 8, bias=True)  # Qwen2's Q/K/V have biases

    def qkv(x):
        return q_proj(x), k_proj(x), v_proj(x)

    gm = trace(qkv, X)
    assert run_pass(fuse_gemms, gm) == 1
    assert op_counts(gm) == {"aten.linear": 1, "aten.slice": 3}
    (fused,) = call_args(gm, LINEAR)
    torch.testing.assert_close(constant_of(gm, fused["bias"]), torch.cat([q_proj.bias, k_proj.bias, v_proj.bias]))
    assert_same_outputs(gm, qkv, X)


def test_attention_and_mlp_inputs_fuse_separately(trace, run_pass, op_counts, assert_same_outputs):
    q_proj, k_proj, v_proj, gate_proj, up_proj = _linears(16, 8, 8, 32, 32)
    down_proj = torch.nn.Linear(32, HIDDEN).eval()

    def block(x):
        q, k, v = q_proj(x), k_proj(x), v_proj(x)
        h = x + (q + torch.cat([k, v], dim=-1))
        return down_proj(F.silu(gate_proj(h)) * up_proj(h))

    gm = trace(block, X)
    assert run_pass(fuse_gemms, gm) == 2
    assert op_counts(gm)["aten.linear"] == 3  # QKV, gate/up, down
    assert op_counts(gm)["aten.slice"] == 5
    assert_same_outputs(gm, block, X)


def test_gemms_of_different_inputs_are_left_alone(trace, run_pass, op_counts):
    q_proj, k_proj = _linears(8, 8)

    def two_inputs(x):
        return q_proj(x), k_proj(x * 2)

    gm = trace(two_inputs, X)
    assert run_pass(fuse_gemms, gm) == 0
    assert op_counts(gm)["aten.linear"] == 2


def test_runtime_weights_are_left_alone(trace, run_pass, op_counts):
    def weights_as_inputs(x, w1, w2):  # not frozen: nothing to concatenate at compile time
        return F.linear(x, w1), F.linear(x, w2)

    gm = trace(weights_as_inputs, X, torch.randn(8, HIDDEN), torch.randn(8, HIDDEN))
    assert run_pass(fuse_gemms, gm) == 0
    assert op_counts(gm) == {"aten.linear": 2}


def test_runtime_bias_is_left_alone(trace, run_pass, op_counts):
    w1, w2 = torch.randn(8, HIDDEN), torch.randn(8, HIDDEN)

    def bias_as_input(x, bias):
        return F.linear(x, w1, bias), F.linear(x, w2, bias)

    gm = trace(bias_as_input, X, torch.randn(8))
    assert run_pass(fuse_gemms, gm) == 0
    assert op_counts(gm) == {"aten.linear": 2}


def test_gemms_with_and_without_bias_are_left_alone(trace, run_pass, op_counts):
    (with_bias,), (without_bias,) = _linears(8, bias=True), _linears(8)

    def mixed(x):
        return with_bias(x), without_bias(x)

    gm = trace(mixed, X)
    assert run_pass(fuse_gemms, gm) == 0
    assert op_counts(gm) == {"aten.linear": 2}
