"""match_mlp: activations between GEMMs (SwiGLU, GeGLU, GPT-2's GELU MLP) become trtllm.mlp_activation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, LlamaConfig
from transformers.activations import ACT2FN
from transformers.models.gpt2.modeling_gpt2 import GPT2MLP
from transformers.models.llama.modeling_llama import LlamaMLP

from trtllm_compile.passes.canonicalize_gelu import canonicalize_gelu
from trtllm_compile.passes.canonicalize_linear import canonicalize_linear
from trtllm_compile.passes.match_mlp import match_mlp

HIDDEN, INTERMEDIATE = 16, 32
MLP_ACTIVATION = torch.ops.trtllm.mlp_activation.default
X = torch.randn(2, 3, HIDDEN)


def _gated_mlp(hidden_act: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return LlamaMLP(
        LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=2, hidden_act=hidden_act)
    ).eval()


@pytest.mark.parametrize(
    "hidden_act, activation",
    [("silu", "silu"), ("gelu_pytorch_tanh", "gelu_tanh"), ("gelu", "gelu"), ("relu", "relu")],
    ids=["swiglu", "geglu_tanh", "geglu", "reglu"],
)
def test_gated_mlp_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, hidden_act, activation):
    mlp = _gated_mlp(hidden_act)  # Llama's MLP: down(act(gate(x)) * up(x)); Gemma's with gelu_pytorch_tanh
    gm = trace(mlp, X)
    assert run_pass(match_mlp, gm) == 1
    assert op_counts(gm) == {"aten.linear": 3, "trtllm.mlp_activation": 1}
    (fused,) = call_args(gm, MLP_ACTIVATION)
    assert fused["activation"] == activation
    assert fused["gate"].target == fused["up"].target == torch.ops.aten.linear.default
    assert_same_outputs(gm, mlp, X)


def test_gated_mlp_with_operands_swapped_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    mlp = _gated_mlp("silu")

    def up_times_act(x):
        return mlp.down_proj(mlp.up_proj(x) * F.silu(mlp.gate_proj(x)))

    gm = trace(up_times_act, X)
    assert run_pass(match_mlp, gm) == 1
    assert op_counts(gm) == {"aten.linear": 3, "trtllm.mlp_activation": 1}
    assert_same_outputs(gm, up_times_act, X)


def test_gpt2_mlp_is_matched_after_canonicalization(trace, run_pass, op_counts, call_args, assert_same_outputs):
    torch.manual_seed(0)
    mlp = GPT2MLP(4 * HIDDEN, GPT2Config(n_embd=HIDDEN, activation_function="gelu_new")).eval()
    gm = trace(mlp, X)
    # Conv1D's addmm and NewGELU's formula reach the matcher only in canonical form.
    assert run_pass(match_mlp, gm) == 0
    assert run_pass(canonicalize_linear, gm) == 2
    assert run_pass(canonicalize_gelu, gm) == 1
    assert run_pass(match_mlp, gm) == 1
    assert op_counts(gm) == {"aten.linear": 2, "trtllm.mlp_activation": 1}
    (fused,) = call_args(gm, MLP_ACTIVATION)
    assert (fused["up"], fused["activation"]) == (None, "gelu_tanh")
    assert_same_outputs(gm, mlp, X)


@pytest.mark.parametrize("hidden_act, activation", [("gelu", "gelu"), ("relu", "relu"), ("silu", "silu")])
def test_plain_mlp_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, hidden_act, activation):
    torch.manual_seed(0)
    fc_in, fc_out = torch.nn.Linear(HIDDEN, INTERMEDIATE), torch.nn.Linear(INTERMEDIATE, HIDDEN)
    act = ACT2FN[hidden_act]

    def gptj_mlp(x):
        return fc_out(act(fc_in(x)))

    gm = trace(gptj_mlp, X)
    assert run_pass(match_mlp, gm) == 1
    assert op_counts(gm) == {"aten.linear": 2, "trtllm.mlp_activation": 1}
    (fused,) = call_args(gm, MLP_ACTIVATION)
    assert (fused["up"], fused["activation"]) == (None, activation)
    assert_same_outputs(gm, gptj_mlp, X)


W_IN, W_GATE = torch.randn(INTERMEDIATE, HIDDEN), torch.randn(INTERMEDIATE, HIDDEN)
W_OUT = torch.randn(8, INTERMEDIATE)


def activation_of_input(x):  # the activation reads the block's input, not a GEMM
    return F.linear(F.silu(x), W_IN)


def activation_last(x):  # no GEMM after the activation
    return F.silu(F.linear(x, W_IN))


def gate_and_up_of_different_inputs(x):
    return F.linear(F.silu(F.linear(x, W_GATE)) * F.linear(2 * x, W_IN), W_OUT)


def activation_reused(x):  # the activated value is an output too
    hidden = F.silu(F.linear(x, W_IN))
    return F.linear(hidden, W_OUT), hidden


def unknown_activation(x):  # tanh is not an activation the op knows
    return F.linear(torch.tanh(F.linear(x, W_IN)), W_OUT)


NOT_AN_MLP = [
    activation_of_input,
    activation_last,
    gate_and_up_of_different_inputs,
    activation_reused,
    unknown_activation,
]


@pytest.mark.parametrize("fn", NOT_AN_MLP, ids=lambda fn: fn.__name__)
def test_activations_outside_mlps_are_left_alone(trace, run_pass, op_counts, fn):
    gm = trace(fn, X)
    before = op_counts(gm)
    assert run_pass(match_mlp, gm) == 0
    assert op_counts(gm) == before
