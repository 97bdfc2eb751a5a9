"""lower_linear: GEMMs of frozen fp16/bf16 weights become trtllm.linear (the cuda target's GEMV for decode)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from support import TINY_MODELS

from trtllm_compile.fx_utils import constant_of
from trtllm_compile.passes.lower_linear import lower_linear
from trtllm_compile.passes.registry import GRAPH_STAGES, Stage, registered_passes

HIDDEN = 16
TRTLLM_LINEAR = torch.ops.trtllm.linear.default


def _weights(*out_features, dtype=torch.bfloat16):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(n, HIDDEN, generator=gen).to(dtype) for n in out_features]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_frozen_half_precision_gemms_are_lowered(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype):
    (w_up,) = _weights(32, dtype=dtype)
    w_down = torch.randn(HIDDEN, 32).to(dtype)
    bias = torch.randn(32).to(dtype)

    def mlp(x):
        return F.linear(F.silu(F.linear(x, w_up, bias)), w_down)

    x = torch.randn(2, 3, HIDDEN).to(dtype)
    gm = trace(mlp, x)
    assert op_counts(gm)["aten.linear"] == 2
    assert run_pass(lower_linear, gm) == 2
    counts = op_counts(gm)
    assert counts["trtllm.linear"] == 2 and counts["aten.linear"] == 0
    up, down = call_args(gm, TRTLLM_LINEAR)
    torch.testing.assert_close(constant_of(gm, up["weight"]), w_up)
    torch.testing.assert_close(constant_of(gm, up["bias"]), bias)
    assert down["bias"] is None
    assert_same_outputs(gm, mlp, x)  # on CPU trtllm.linear is F.linear: the same values


def test_runtime_and_fp32_weights_are_left_alone(trace, run_pass, op_counts):
    (w_half,) = _weights(8)
    w_fp32 = torch.randn(8, HIDDEN)

    def mixed(x, w_runtime):
        return F.linear(x, w_half), F.linear(x, w_runtime), F.linear(x.float(), w_fp32)

    gm = trace(mixed, torch.randn(4, HIDDEN).bfloat16(), torch.randn(8, HIDDEN).bfloat16())
    assert run_pass(lower_linear, gm) == 1  # only the frozen bf16 weight: no GEMV for runtime or fp32 weights
    counts = op_counts(gm)
    assert counts["trtllm.linear"] == 1 and counts["aten.linear"] == 2


def test_runs_in_the_lower_stage_of_the_step_graph_only():
    (spec,) = [s for s in registered_passes() if s.name == "lower_linear"]
    assert spec.stage == Stage.LOWER and spec.stage not in GRAPH_STAGES


def test_step_graph_of_a_bf16_llama_runs_every_gemm_through_trtllm_linear(op_counts):
    from trtllm_compile.runtime.step_graph import build_step_graph

    model = TINY_MODELS["llama"].build(dtype=torch.bfloat16)
    step = build_step_graph(model)
    counts = op_counts(step.graph_module)
    # Per layer: fused QKV, O, fused gate/up, down; then the LM head (after select_logits).
    layers = model.config.num_hidden_layers
    assert counts["trtllm.linear"] == 4 * layers + 1
    assert counts["aten.linear"] == 0
    assert [r.num_rewrites for r in step.report.passes if r.name == "lower_linear"] == [4 * layers + 1]
