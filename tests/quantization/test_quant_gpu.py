"""The CUDA fast paths of the quantized ops (torch._scaled_mm, torch._int_mm, the INT4 Triton kernels) against the
references, and tinygemm (the INT4 benchmark's comparison).

Each test first computes the reference on the same CUDA tensors, then makes the reference raise, so the op
must have taken its fast path (a silent fallback would fail the test instead of passing it trivially).
"""

from __future__ import annotations

import pytest
import torch
from quant_support import GPU_RTOL, rel_err

from trtllm_compile.ops import quant
from trtllm_compile.quantization.formats import int4_codes

pytestmark = pytest.mark.gpu
ops = torch.ops.trtllm
ROWS = [1, 16, 33, 128]  # decode, a padded tile, an odd count, prefill


def _operands(m: int, k: int, n: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=gen)
    x[:, 7] *= 30  # an outlier channel
    w = torch.randn(n, k, generator=gen) * 0.02
    bias = torch.randn(n, generator=gen) * 0.1
    return x.to("cuda", dtype), w.cuda(), bias.to("cuda", dtype)


def _forbid(monkeypatch, name: str) -> None:
    def fallback(*args, **kwargs):
        raise AssertionError(f"{name} ran: the CUDA fast path fell back to the reference")

    monkeypatch.setattr(quant, name, fallback)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("m", ROWS)
def test_fp8_linear_scaled_mm(monkeypatch, m, per_channel, static, dtype):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 GEMMs need compute capability 8.9 or newer")
    x, w, bias = _operands(m, 1024, 768, dtype)
    w_scale = w.abs().amax(1) / 448 if per_channel else w.abs().max() / 448
    w_fp8 = quant.fp8_quantize(w, w_scale[:, None] if per_channel else w_scale)
    x_scale = x.float().abs().max() / 448 if static else None
    expected = quant.fp8_linear_reference(x, w_fp8, w_scale, x_scale, bias)
    _forbid(monkeypatch, "fp8_linear_reference")
    actual = ops.fp8_linear(x, w_fp8, w_scale, x_scale, bias)
    assert actual.dtype == dtype and actual.shape == (m, 768)
    assert rel_err(actual, expected) <= GPU_RTOL["fp8"]


@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
@pytest.mark.parametrize("m", ROWS)
def test_int8_linear_int_mm(monkeypatch, m, static):
    x, w, bias = _operands(m, 1024, 768, torch.bfloat16)
    w_scale = w.abs().amax(1) / 127
    w_int8 = quant.int8_quantize(w, w_scale[:, None])
    x_scale = x.float().abs().max() / 127 if static else None
    expected = quant.int8_linear_reference(x, w_int8, w_scale, x_scale, bias)
    _forbid(monkeypatch, "int8_linear_reference")
    actual = ops.int8_linear(x, w_int8, w_scale, x_scale, bias)
    assert rel_err(actual, expected) <= GPU_RTOL["int8"]


@pytest.mark.parametrize("zero_point", [True, False], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("group_size", [64, 128])
@pytest.mark.parametrize("m", ROWS)
def test_int4_linear_triton(monkeypatch, m, group_size, zero_point):
    x, w, bias = _operands(m, 1024, 512, torch.bfloat16)
    codes, scales, zeros = int4_codes(w, group_size, zero_point)
    packed = quant.pack_int4(codes)
    expected = quant.int4_linear_reference(x, packed, scales, zeros, group_size, bias)
    _forbid(monkeypatch, "int4_linear_reference")
    actual = ops.int4_linear(x, packed, scales, zeros, group_size, bias)
    assert rel_err(actual, expected) <= GPU_RTOL["int4"]
    assert torch.equal(ops.int4_linear(x, packed, scales, zeros, group_size, bias), actual)  # deterministic


@pytest.mark.parametrize("zero_point", [True, False], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("m", [1, 16, 33])
def test_int4_linear_tinygemm(m, zero_point):
    """tinygemm, the comparison of benchmarks/quant_decode.py, computes the same GEMM (its scales in bf16)."""
    x, w, bias = _operands(m, 1024, 512, torch.bfloat16)
    codes, scales, zeros = int4_codes(w, 128, zero_point)
    packed = quant.pack_int4(codes)
    actual = quant.int4_linear_tinygemm(x, packed, scales, zeros, 128, bias)
    assert rel_err(actual, quant.int4_linear_reference(x, packed, scales, zeros, 128, bias)) <= GPU_RTOL["int4"]
    assert id(packed) in quant._tinygemm_cache  # converted once, reused by the next call
    assert torch.equal(quant.int4_linear_tinygemm(x, packed, scales, zeros, 128, bias), actual)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("m", [1, 4])
def test_int4_gated_linear_in_a_cuda_graph(monkeypatch, m, activation):
    """`trtllm::int4_gated_linear` on CUDA, tuned, then replayed from a CUDA graph with a new x: one row runs the
    gated mma kernel, four the INT4 GEMM and the activation kernel; never a reference."""
    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    x, w, bias = _operands(m, 1024, 2 * 768, torch.bfloat16)
    codes, scales, zeros = int4_codes(w, 128, True)
    weights = (quant.pack_int4(codes), scales, zeros, 128, bias)
    ops.int4_gated_linear(x, *weights, activation)  # tunes outside the capture
    _forbid(monkeypatch, "int4_gated_linear_reference")
    _forbid(monkeypatch, "int4_linear_reference")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.int4_gated_linear(x, *weights, activation)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    monkeypatch.undo()
    assert out.shape == (m, 768)
    assert rel_err(out, quant.int4_gated_linear_reference(x, *weights, activation)) <= GPU_RTOL["int4"]


def test_int4_linear_runs_smollm2_shapes_and_falls_back_where_the_kernels_cannot(monkeypatch):
    """SmolLM2's K = 576 (no multiple of tinygemm's 128) runs the Triton kernels; K = 100 (no whole int32 words of
    codes) runs the reference, on the GPU."""
    x, w, bias = _operands(4, 576, 256, torch.bfloat16)
    codes, scales, zeros = int4_codes(w, 128, True)
    packed = quant.pack_int4(codes)
    expected = quant.int4_linear_reference(x, packed, scales, zeros, 128, bias)
    with monkeypatch.context() as patch:
        _forbid(patch, "int4_linear_reference")
        assert rel_err(ops.int4_linear(x, packed, scales, zeros, 128, bias), expected) <= GPU_RTOL["int4"]
    x, w, bias = _operands(4, 100, 256, torch.bfloat16)
    codes, scales, zeros = int4_codes(w, 32, True)
    packed = quant.pack_int4(codes)
    actual = ops.int4_linear(x, packed, scales, zeros, 32, bias)
    assert torch.equal(actual, quant.int4_linear_reference(x, packed, scales, zeros, 32, bias))
