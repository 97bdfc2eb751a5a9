"""trtllm.mlp_activation against Hugging Face's activations (ACT2FN), gated (SwiGLU, GeGLU) and plain."""

from __future__ import annotations

import pytest
import torch
from transformers.activations import ACT2FN

ops = torch.ops.trtllm
DTYPES = [torch.float32, torch.bfloat16]
# The op's activation name -> the Hugging Face `hidden_act` names that mean it (GPT-2's gelu_new spells the tanh
# approximation out, so it differs from aten's fused form by float rounding only).
HF_NAMES = {
    "silu": ["silu", "swish"],
    "gelu": ["gelu"],
    "gelu_tanh": ["gelu_pytorch_tanh", "gelu_new"],
    "relu": ["relu"],
}
CASES = [(op_name, hf_name) for op_name, hf_names in HF_NAMES.items() for hf_name in hf_names]


def _gate_up(dtype):
    gen = torch.Generator().manual_seed(0)
    fused = (3 * torch.randn(2, 5, 64, generator=gen)).to(dtype)
    return fused[..., :32], fused[..., 32:]  # halves of a fused gate/up GEMM's output, read in place


@pytest.mark.parametrize("activation, hf_name", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gated_matches_hf(assert_close, dtype, activation, hf_name):
    gate, up = _gate_up(dtype)
    assert_close(ops.mlp_activation(gate, up, activation), ACT2FN[hf_name](gate) * up)


@pytest.mark.parametrize("activation, hf_name", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_plain_matches_hf(assert_close, dtype, activation, hf_name):
    gate, _ = _gate_up(dtype)
    assert_close(ops.mlp_activation(gate, None, activation), ACT2FN[hf_name](gate))


def test_plain_output_does_not_alias_its_input():
    # relu of a non-negative input is the input itself; a custom op's output must still be a new tensor.
    gate = torch.rand(4, 8)
    out = ops.mlp_activation(gate, None, "relu")
    assert torch.equal(out, gate) and out.data_ptr() != gate.data_ptr()


@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("activation", list(HF_NAMES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opcheck(opcheck, dtype, activation, gated):
    gate, up = _gate_up(dtype)
    opcheck(ops.mlp_activation.default, (gate, up if gated else None, activation))
