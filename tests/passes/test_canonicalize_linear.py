"""canonicalize_linear: GEMMs on flattened activations (GPT-2's Conv1D) become aten.linear with W transposed."""

from __future__ import annotations

import torch
from transformers.pytorch_utils import Conv1D

from trtllm_compile.fx_utils import constant_of
from trtllm_compile.passes.canonicalize_linear import canonicalize_linear

X = torch.randn(2, 3, 8)
LINEAR = torch.ops.aten.linear.default


def _conv1d(nx=8, nf=12) -> Conv1D:
    torch.manual_seed(0)
    conv = Conv1D(nf, nx)
    torch.nn.init.normal_(conv.bias)
    return conv.eval()


def test_gpt2_conv1d_becomes_linear_with_frozen_transposed_weight(
    trace, run_pass, op_counts, call_args, assert_same_outputs
):
    conv = _conv1d()
    gm = trace(conv, X)
    assert op_counts(gm) == {"aten.view": 2, "aten.addmm": 1}
    assert run_pass(canonicalize_linear, gm) == 1
    assert op_counts(gm) == {"aten.linear": 1}
    (linear,) = call_args(gm, LINEAR)
    # The weight is transposed once, at compile time: [in, out] Conv1D storage -> [out, in] linear weight.
    torch.testing.assert_close(constant_of(gm, linear["weight"]), conv.weight.detach().t())
    torch.testing.assert_close(constant_of(gm, linear["bias"]), conv.bias.detach())
    assert linear["input"].op == "placeholder"  # the activation itself, not its flattened view
    assert_same_outputs(gm, conv, X)


def test_mm_without_bias_becomes_linear(trace, run_pass, op_counts, call_args, assert_same_outputs):
    weight = torch.randn(8, 12)

    def matmul_flattened(x):
        return torch.mm(x.view(-1, 8), weight).view(2, 3, 12)

    gm = trace(matmul_flattened, X)
    assert run_pass(canonicalize_linear, gm) == 1
    assert op_counts(gm) == {"aten.linear": 1}
    (linear,) = call_args(gm, LINEAR)
    assert linear["bias"] is None
    assert_same_outputs(gm, matmul_flattened, X)


def test_weight_that_is_an_input_is_transposed_in_the_graph(trace, run_pass, op_counts, assert_same_outputs):
    def addmm_with_runtime_weight(x, weight, bias):
        return torch.addmm(bias, x.view(-1, 8), weight).view(2, 3, 12)

    args = (X, torch.randn(8, 12), torch.randn(12))
    gm = trace(addmm_with_runtime_weight, *args)
    assert run_pass(canonicalize_linear, gm) == 1
    assert op_counts(gm) == {"aten.linear": 1, "aten.t": 1}
    assert_same_outputs(gm, addmm_with_runtime_weight, *args)


def test_every_conv1d_of_a_block_is_rewritten(trace, run_pass, op_counts, assert_same_outputs):
    c_fc, c_proj = _conv1d(8, 32), _conv1d(32, 8)

    def gpt2_mlp_without_activation(x):
        return c_proj(c_fc(x))

    gm = trace(gpt2_mlp_without_activation, X)
    assert run_pass(canonicalize_linear, gm) == 2
    assert op_counts(gm) == {"aten.linear": 2}
    assert_same_outputs(gm, gpt2_mlp_without_activation, X)


def test_scaled_addmm_is_left_alone(trace, run_pass, op_counts):
    conv = _conv1d()

    def scaled(x):
        return torch.addmm(conv.bias, x.view(-1, 8), conv.weight, beta=0.5, alpha=2.0).view(2, 3, 12)

    gm = trace(scaled, X)
    assert run_pass(canonicalize_linear, gm) == 0
    assert op_counts(gm)["aten.addmm"] == 1


def test_unflatten_to_other_leading_dims_is_left_alone(trace, run_pass, op_counts):
    conv = _conv1d()

    def regrouped(x):  # rows regrouped as [3, 2]: not the activation's own leading dims
        return torch.addmm(conv.bias, x.view(-1, 8), conv.weight).view(3, 2, 12)

    gm = trace(regrouped, X)
    assert run_pass(canonicalize_linear, gm) == 0
    assert op_counts(gm)["aten.addmm"] == 1


def test_gemm_whose_output_stays_flat_is_left_alone(trace, run_pass, op_counts):
    conv = _conv1d()

    def flattened_twice(x):  # the GEMM's output is used flat, with no view back to the activation's shape
        return torch.addmm(conv.bias, x.view(-1, 8), conv.weight) * 2

    gm = trace(flattened_twice, X)
    assert run_pass(canonicalize_linear, gm) == 0
    assert op_counts(gm)["aten.addmm"] == 1
