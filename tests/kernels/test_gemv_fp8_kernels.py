"""The FP8 GEMV (kernels/gemv.py `fp8_gemv`) against `ops.quant.fp8_linear_reference`, and `trtllm::fp8_linear`
taking it for decode rows on CUDA.

Both quantize x the same way (x times 1 / scale, saturated to +-448, rounded to E4M3) and multiply the same FP8
values in fp32 (the dot path on FP8 tensor cores), so they differ by the fp32 summation order only: one ulp of
the output dtype, the "elementwise" tolerance of conftest.py. On CPU, Triton's interpreter mis-rounds
fp32 -> E4M3 casts whose mantissa carries into the exponent (125.7 becomes 64), so the interpreter tests feed x
values that are FP8 codes times the scale (exact in any rounding) plus a saturating one; the GPU tests use
random x.
"""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops.quant  # noqa: F401  (registers torch.ops.trtllm.fp8_linear)
from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.ops.quant import FP8_MAX, fp8_linear_reference, fp8_quantize

X_SCALE = 2.0**-3  # a power of two: x = code * X_SCALE is exact in bf16 and x / X_SCALE is the code again
LLAMA_2_7B = layer_gemms("llama-2-7b")


def _operands(m: int, n: int, k: int, per_channel: bool, device: str, exact_x: bool, bias: bool = False):
    gen = torch.Generator().manual_seed(m * 131 + n + k)
    w = torch.randn(n, k, generator=gen) * 0.02
    w_scale = w.abs().amax(1) / FP8_MAX if per_channel else w.abs().max() / FP8_MAX
    w_fp8 = fp8_quantize(w, w_scale[:, None] if per_channel else w_scale)
    if exact_x:
        x = fp8_quantize(torch.randn(m, k, generator=gen) * 40, torch.tensor(1.0)).float() * X_SCALE
        x[:, 3] = 3 * FP8_MAX * X_SCALE  # saturates to 448
        x_scale = torch.tensor(X_SCALE)
    else:
        x = torch.randn(m, k, generator=gen)
        x[:, 7] *= 30  # an outlier channel, as in activations
        x_scale = x.abs().max() / FP8_MAX
    b = torch.randn(n, generator=gen) * 0.1 if bias else None
    to = dict(device=device)
    x = x.to(device, torch.bfloat16)
    return x, w_fp8.to(**to), w_scale.to(**to), x_scale.to(**to), b.to(device, torch.bfloat16) if bias else None


# ---------------------------------------------------------------- CPU: Triton's interpreter, tiny shapes

SMALL_PLANS = {  # every fma variant (plain, register prefetch, split-K with prefetch), and the FP8 tensor-core path
    "fma": dict(path="fma", block_n=4, block_k=64, num_warps=1),
    "fma_prefetch": dict(path="fma", block_n=4, block_k=64, num_warps=1, num_stages=2),
    "fma_split3_prefetch": dict(path="fma", block_n=8, block_k=32, split_k=3, num_stages=2),
    "dot": dict(path="dot", block_n=16, block_k=32),
    "dot_split3": dict(path="dot", block_n=16, block_k=32, split_k=3),
}


@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("k", [200, 256], ids=["k200", "k256"])  # 200: a partial last K tile
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("plan", list(SMALL_PLANS))
def test_fp8_gemv_interpreted(interpreted, assert_matches, plan, m, k, per_channel):
    gemv = interpreted("gemv")
    x, w, w_scale, x_scale, bias = _operands(m, 40, k, per_channel, "cpu", exact_x=True, bias=m == 3)
    assert gemv.supports_fp8(x, w, w_scale, x_scale, bias)
    out = gemv.fp8_gemv(x, w, w_scale, x_scale, bias, plan=gemv.Plan(**SMALL_PLANS[plan]))
    assert_matches(out, fp8_linear_reference(x, w, w_scale, x_scale, bias))


def test_fp8_gemv_takes_static_scales_and_few_rows_only(interpreted):
    gemv = interpreted("gemv")
    x, w, w_scale, x_scale, _ = _operands(5, 16, 64, True, "cpu", exact_x=True)
    assert gemv.supports_fp8(x[:4], w, w_scale, x_scale, None)
    assert not gemv.supports_fp8(x, w, w_scale, x_scale, None)  # 5 rows: torch._scaled_mm's shape
    assert not gemv.supports_fp8(x[:1], w, w_scale, None, None)  # dynamic per-token scales
    assert not gemv.supports_fp8(x[:1], w, w_scale[:3], x_scale, None)  # neither per tensor nor per channel
    assert not gemv.supports_fp8(x[:1], w.float(), w_scale, x_scale, None)
    with pytest.raises(ValueError, match="fma or dot path"):
        gemv.fp8_gemv(x[:1], w, w_scale, x_scale, plan=gemv.CUBLAS)


# ---------------------------------------------------------------- GPU: Llama-2-7B shapes


@pytest.fixture
def fp8_gpu():
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 E4M3 needs compute capability 8.9 or newer")
    from trtllm_compile.kernels import gemv

    return gemv


@pytest.mark.gpu
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", list(LLAMA_2_7B))
def test_fp8_gemv_gpu_llama_2_7b(fp8_gpu, assert_matches, shape, m, per_channel):
    x, w, w_scale, x_scale, _ = _operands(m, *LLAMA_2_7B[shape], per_channel, "cuda", exact_x=False)
    out = fp8_gpu.fp8_gemv(x, w, w_scale, x_scale)  # the default plan (tests run with TRTLLM_TRITON_AUTOTUNE=0)
    assert_matches(out, fp8_linear_reference(x, w, w_scale, x_scale, None))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3])
def test_every_fp8_candidate_plan_gpu(fp8_gpu, m):
    n, k = LLAMA_2_7B["down"]
    x, w, w_scale, x_scale, bias = _operands(m, n, k, True, "cuda", exact_x=False, bias=True)
    expected = fp8_linear_reference(x, w, w_scale, x_scale, bias)
    for plan in fp8_gpu.FP8_CANDIDATES[fp8_gpu.row_bucket(m)]:
        out = fp8_gpu.fp8_gemv(x, w, w_scale, x_scale, bias, plan=plan)
        # the reference rounds the product to bf16 before adding the bias, the GEMV after: two ulps
        torch.testing.assert_close(out, expected, atol=2e-2, rtol=1.6e-2)


@pytest.mark.gpu
def test_fp8_linear_op_runs_decode_rows_on_the_gemv_in_a_cuda_graph(fp8_gpu, assert_matches, monkeypatch):
    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    n, k = LLAMA_2_7B["qkv"]
    x, w, w_scale, x_scale, _ = _operands(1, n, k, True, "cuda", exact_x=False)
    scaled_mm = torch._scaled_mm
    monkeypatch.setattr(torch, "_scaled_mm", lambda *a, **kw: pytest.fail("decode rows reached torch._scaled_mm"))
    torch.ops.trtllm.fp8_linear(x, w, w_scale, x_scale, None)  # tunes the plan outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = torch.ops.trtllm.fp8_linear(x, w, w_scale, x_scale, None)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(out, fp8_linear_reference(x, w, w_scale, x_scale, None))
    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    rows = _operands(16, n, k, True, "cuda", exact_x=False)[0]  # 16 rows: cuBLASLt's FP8 GEMM, not the GEMV
    assert torch.ops.trtllm.fp8_linear(rows, w, w_scale, x_scale, None).shape == (16, n)
