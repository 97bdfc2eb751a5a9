"""RMSNorm and residual-add + RMSNorm kernels against `trtllm::rms_norm` / `trtllm::add_rms_norm`."""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
EPS = 1e-6


def _inputs(shape, dtype, device, weight_dtype=None):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    residual = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    # Trained norm weights sit near 1 (Llama) or near 0 (Gemma's 1 + w); either way small.
    weight = (1 + 0.1 * torch.randn(shape[-1], generator=gen)).to(device=device, dtype=weight_dtype or dtype)
    return x, residual, weight


def _check_both(impl, x, residual, weight, unit_offset, assert_matches, reference):
    """`impl` is the kernel module or `torch.ops.trtllm`: both have rms_norm and add_rms_norm."""
    ops = torch.ops.trtllm
    expected = reference(ops.rms_norm, x, weight, EPS, unit_offset)
    assert_matches(impl.rms_norm(x, weight, EPS, unit_offset), expected, rounds_to=x.dtype)
    out, summed = impl.add_rms_norm(x, residual, weight, EPS, unit_offset)
    ref_out, ref_summed = reference(ops.add_rms_norm, x, residual, weight, EPS, unit_offset)
    assert_matches(summed, ref_summed)
    assert_matches(out, ref_out, rounds_to=x.dtype)


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_interpreted(interpreted, assert_matches, reference, dtype, unit_offset):
    norm = interpreted("norm")
    x, residual, weight = _inputs((3, 5, 48), dtype, "cpu")  # 48: not a power of two, exercises the mask
    _check_both(norm, x, residual, weight, unit_offset, assert_matches, reference)


def test_rms_norm_interpreted_strided_rows_and_fp32_weight(interpreted, assert_matches, reference):
    norm = interpreted("norm")
    x, residual, weight = _inputs((6, 64), torch.bfloat16, "cpu", weight_dtype=torch.float32)
    x, residual = x[:, :40], residual[:, 8:48]  # row stride 64, one view at an offset
    assert x.stride(0) == 64 and not x.is_contiguous()
    # bf16 x with an fp32 weight: the Llama form's output is promoted to fp32.
    assert norm.rms_norm(x, weight[:40], EPS, False).dtype == torch.float32
    _check_both(norm, x, residual, weight[:40], False, assert_matches, reference)


@pytest.mark.gpu
@pytest.mark.parametrize("hidden", [4096, 2304])
@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rms_norm_gpu(cuda_ops, assert_matches, reference, dtype, unit_offset, hidden):
    x, residual, weight = _inputs((4, 33, hidden), dtype, "cuda")
    _check_both(cuda_ops, x, residual, weight, unit_offset, assert_matches, reference)


@pytest.mark.gpu
def test_rms_norm_gpu_autotuned_strided(cuda_ops, assert_matches, reference, monkeypatch):
    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    x, residual, weight = _inputs((64, 2 * 4096), torch.bfloat16, "cuda")
    x, residual = x[:, 4096:], residual[:, :4096]  # the second half of a fused buffer: row stride 8192
    _check_both(cuda_ops, x, residual, weight[:4096], False, assert_matches, reference)
