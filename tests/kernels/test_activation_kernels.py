"""MLP activation kernel against `trtllm::mlp_activation`, reading gate/up as halves of one fused buffer."""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ACTIVATIONS = ["silu", "gelu", "gelu_tanh", "relu"]


def _fused_halves(leading, inter: int, dtype, device):
    """gate and up as the two halves of a fused gate/up GEMM output [..., 2I]: row stride 2I, no copy."""
    gen = torch.Generator().manual_seed(0)
    buf = (2 * torch.randn(*leading, 2 * inter, generator=gen)).to(device=device, dtype=dtype)
    gate, up = buf[..., :inter], buf[..., inter:]
    assert gate.stride(-2) == 2 * inter and up.data_ptr() != gate.data_ptr()
    return gate, up


@pytest.mark.parametrize("with_up", [True, False], ids=["glu", "plain"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_activation_interpreted(interpreted, assert_matches, reference, dtype, activation, with_up):
    kernels = interpreted("activation")
    gate, up = _fused_halves((2, 3), 40, dtype, "cpu")
    up = up if with_up else None
    expected = reference(torch.ops.trtllm.mlp_activation, gate, up, activation)
    assert_matches(kernels.mlp_activation(gate, up, activation), expected)


@pytest.mark.gpu
@pytest.mark.parametrize("with_up", [True, False], ids=["glu", "plain"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mlp_activation_gpu(cuda_ops, assert_matches, reference, dtype, activation, with_up):
    gate, up = _fused_halves((4, 33), 11008, dtype, "cuda")  # Llama-2-7B intermediate size
    up = up if with_up else None
    expected = reference(torch.ops.trtllm.mlp_activation, gate, up, activation)
    assert_matches(cuda_ops.mlp_activation(gate, up, activation), expected)


@pytest.mark.gpu
def test_mlp_activation_gpu_autotuned(cuda_ops, assert_matches, reference, monkeypatch):
    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    gate, up = _fused_halves((256,), 14336, torch.bfloat16, "cuda")  # Llama-3-8B intermediate size
    expected = reference(torch.ops.trtllm.mlp_activation, gate, up, "silu")
    assert_matches(cuda_ops.mlp_activation(gate, up, "silu"), expected)
