"""trtllm.rms_norm, add_rms_norm and layer_norm against Hugging Face's RMSNorm modules and torch's LayerNorm."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

ops = torch.ops.trtllm
EPS = 1e-6
DTYPES = [torch.float32, torch.bfloat16]
# unit_offset -> the Hugging Face module whose form it selects.
HF_NORMS = {False: LlamaRMSNorm, True: Gemma3RMSNorm}


def _inputs(dtype, shape=(2, 5, 48)):
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(shape, generator=gen)).to(dtype)
    residual = torch.randn(shape, generator=gen).to(dtype)
    weight = 0.5 * torch.randn(shape[-1], generator=gen)
    return x, residual, weight


def _hf_norm(unit_offset: bool, weight: torch.Tensor, dtype: torch.dtype) -> torch.nn.Module:
    """The Hugging Face RMSNorm of this form with `weight` (Llama's multiplies by w, Gemma's by 1 + w)."""
    norm = HF_NORMS[unit_offset](weight.shape[0], eps=EPS)
    with torch.no_grad():
        norm.weight.copy_(weight)
    return norm.to(dtype).eval()


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_matches_hf(assert_close, dtype, unit_offset):
    x, _, weight = _inputs(dtype)
    norm = _hf_norm(unit_offset, weight, dtype)
    assert_close(ops.rms_norm(x, norm.weight.detach(), EPS, unit_offset), norm(x))


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
def test_rms_norm_bf16_input_with_fp32_weight_follows_hf_promotion(assert_close, unit_offset):
    # Llama multiplies the fp32 weight by the bf16 normalized value (an fp32 result); Gemma casts back to bf16.
    x, _, weight = _inputs(torch.bfloat16)
    norm = _hf_norm(unit_offset, weight, torch.float32)
    expected = norm(x)
    assert expected.dtype == (torch.bfloat16 if unit_offset else torch.float32)
    assert_close(ops.rms_norm(x, weight, EPS, unit_offset), expected)


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_add_rms_norm_returns_normed_sum_and_sum(assert_close, dtype, unit_offset):
    x, residual, weight = _inputs(dtype)
    norm = _hf_norm(unit_offset, weight, dtype)
    normed, summed = ops.add_rms_norm(x, residual, norm.weight.detach(), EPS, unit_offset)
    assert_close(summed, x + residual)
    assert_close(normed, norm(x + residual))


def test_rms_norm_reads_strided_rows(assert_close):
    # A slice of a wider activation (what a fused GEMM's output looks like) normalizes like a contiguous copy.
    x, _, weight = _inputs(torch.float32, shape=(2, 5, 96))
    view = x[..., 24:72]
    norm = _hf_norm(False, weight[:48], torch.float32)
    assert_close(ops.rms_norm(view, weight[:48], EPS, False), norm(view.contiguous()))


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_matches_torch(assert_close, dtype, affine):
    x, _, weight = _inputs(dtype)
    layer_norm = torch.nn.LayerNorm(x.shape[-1], eps=1e-5, elementwise_affine=affine).to(dtype).eval()
    if affine:
        with torch.no_grad():
            layer_norm.weight.copy_(weight)
            layer_norm.bias.copy_(weight.flip(0))
    weight_arg = layer_norm.weight.detach() if affine else None
    bias_arg = layer_norm.bias.detach() if affine else None
    assert_close(ops.layer_norm(x, weight_arg, bias_arg, 1e-5), layer_norm(x))


def _opcheck_cases():
    x, residual, weight = _inputs(torch.float32, shape=(2, 3, 16))
    transposed = x.transpose(0, 1)  # a non-contiguous activation
    bf16 = x.bfloat16()
    return {
        "rms_norm": (ops.rms_norm.default, (x, weight, EPS, False)),
        "rms_norm_gemma": (ops.rms_norm.default, (x, weight, EPS, True)),
        "rms_norm_transposed": (ops.rms_norm.default, (transposed, weight, EPS, False)),
        "rms_norm_bf16_fp32_weight": (ops.rms_norm.default, (bf16, weight, EPS, False)),
        "rms_norm_gemma_bf16_fp32_weight": (ops.rms_norm.default, (bf16, weight, EPS, True)),
        "add_rms_norm": (ops.add_rms_norm.default, (x, residual, weight, EPS, False)),
        "add_rms_norm_gemma": (ops.add_rms_norm.default, (x, residual, weight, EPS, True)),
        "add_rms_norm_bf16_fp32_weight": (ops.add_rms_norm.default, (bf16, residual.bfloat16(), weight, EPS, False)),
        "layer_norm": (ops.layer_norm.default, (x, weight, weight.flip(0), 1e-5)),
        "layer_norm_no_affine": (ops.layer_norm.default, (x, None, None, 1e-5)),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(opcheck, case):
    opcheck(*_opcheck_cases()[case])
