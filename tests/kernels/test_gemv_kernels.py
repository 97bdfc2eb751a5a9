"""Skinny-GEMM kernels (kernels/gemv.py) against F.linear, and `trtllm::linear`'s dispatch on CUDA.

Tolerance: the kernels accumulate in fp32 and round once to the output dtype (after adding the bias in fp32),
as cuBLAS does; only the summation order differs (fp32 error ~1e-6 at these sizes, outputs ~N(0, 1) because
the weights are scaled by 1/sqrt(K)). So against the fp32 reference rounded to the dtype the results differ by
at most one ulp: the "elementwise" tolerance of conftest.py (one ulp of the output dtype, plus the
interpreter's truncating bf16 cast on CPU). Against cuBLAS's bf16 GEMM, which rounds its own fp32 sum, two
ulps (GEMM_VS_CUBLAS).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import trtllm_compile.ops.linear  # noqa: F401  (registers torch.ops.trtllm.linear)
from trtllm_compile.bench.shapes import layer_gemms

GEMM_VS_CUBLAS = {torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 1.6e-2)}  # (atol, rtol): two ulps
LLAMA_2_7B = {**layer_gemms("llama-2-7b"), "lm_head": (32000, 4096)}  # name: (N, K) of the weight, after fuse_gemms
ROWS = [1, 2, 4, 8, 16]


def _inputs(m: int, n: int, k: int, dtype, device, bias: bool = False, row_stride: int | None = None):
    """x [m, k] (a view with row stride `row_stride` if given), weight [n, k] ~ N(0, 1/k), optional bias."""
    gen = torch.Generator().manual_seed(m * 7919 + n + k)
    x = torch.randn(m, row_stride or k, generator=gen)[:, :k]
    weight = torch.randn(n, k, generator=gen) / math.sqrt(k)
    b = torch.randn(n, generator=gen) if bias else None
    to = dict(device=device, dtype=dtype)
    x = x.to(**to) if row_stride is None else torch.empty(m, row_stride, **to)[:, :k].copy_(x)
    return x, weight.to(**to), b.to(**to) if bias else None


def _fp32_reference(x, weight, bias):
    b = bias.float() if bias is not None else None
    return F.linear(x.float(), weight.float(), b).to(x.dtype)


# ---------------------------------------------------------------- CPU: Triton's interpreter, tiny shapes

SMALL_PLANS = {  # small tiles so the interpreter runs fast; every path: fma, fma prefetch, split-K, dot
    "fma": dict(path="fma", block_n=4, block_k=64, num_warps=1),
    "fma_prefetch": dict(path="fma", block_n=4, block_k=64, num_warps=1, num_stages=2),
    "fma_split3_prefetch": dict(path="fma", block_n=8, block_k=32, split_k=3, num_stages=2),
    "dot": dict(path="dot", block_n=16, block_k=32),
    "dot_split2": dict(path="dot", block_n=32, block_k=64, split_k=2),
}


@pytest.mark.parametrize("k", [200, 256], ids=["k200", "k256"])  # 200: a partial last K tile
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 16])
@pytest.mark.parametrize("plan", list(SMALL_PLANS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gemv_interpreted(interpreted, assert_matches, dtype, plan, m, k):
    gemv = interpreted("gemv")
    plan = gemv.Plan(**SMALL_PLANS[plan])
    if plan.path == "fma" and m > 4:
        pytest.skip("the fma path takes at most 4 rows")
    x, weight, bias = _inputs(m, 40, k, dtype, "cpu", bias=m % 2 == 1)  # N = 40: a partial last N tile
    assert_matches(gemv.gemv(x, weight, bias, plan=plan), _fp32_reference(x, weight, bias))


def test_linear_interpreted_strided_rows_and_leading_dims(interpreted, assert_matches):
    gemv = interpreted("gemv")
    x, weight, bias = _inputs(6, 48, 256, torch.bfloat16, "cpu", bias=True, row_stride=320)
    x = x.view(2, 3, 256)  # rows of a wider buffer, with leading dims: [2, 3, K] with row stride 320
    assert not x.is_contiguous() and gemv.supports(x, weight, bias)
    out = gemv.linear(x, weight, bias)  # the default plan of the 8-row bucket
    assert out.shape == (2, 3, 48)
    assert_matches(out, _fp32_reference(x, weight, bias))


@pytest.mark.parametrize("plan", ["fma_split3_prefetch", "dot"])
def test_gemv_interpreted_fp32_sums(interpreted, plan):
    """out_dtype float32 (a row-parallel GEMM's partial sums): the fp32 sums unrounded, not bf16's."""
    gemv = interpreted("gemv")
    x, weight, _ = _inputs(3, 40, 256, torch.bfloat16, "cpu")
    out = gemv.gemv(x, weight, plan=gemv.Plan(**SMALL_PLANS[plan]), out_dtype=torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, F.linear(x.float(), weight.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("plan", ["fma_split3_prefetch", "dot_split2"])
def test_split_k_interpreted_last_split_sums_and_rearms_its_counts(interpreted, assert_matches, plan):
    """Split-K without a second kernel: the last split of each output tile sums the partials, then sets the tile's
    count back to zero, so the next launch (here the same GEMV again) finds the counts as the first did."""
    gemv = interpreted("gemv")
    x, weight, bias = _inputs(3, 40, 256, torch.bfloat16, "cpu", bias=True)
    plan = gemv.Plan(**SMALL_PLANS[plan])
    first = gemv.gemv(x, weight, bias, plan=plan)
    assert_matches(first, _fp32_reference(x, weight, bias))
    assert not gemv.split_counts(x.device).any()
    assert torch.equal(gemv.gemv(x, weight, bias, plan=plan), first)
    with pytest.raises(ValueError, match="larger BLOCK_N"):
        gemv.split_k_buffers(first.view(-1, 40), 2, gemv.SPLIT_COUNTS + 1)


def test_linear_interpreted_falls_back_to_f_linear(interpreted, monkeypatch):
    gemv = interpreted("gemv")
    x, weight, _ = _inputs(17, 8, 32, torch.bfloat16, "cpu")
    assert not gemv.supports(x, weight, None)  # 17 rows: a BLAS library's shape
    launched = []
    launch = gemv._launch
    monkeypatch.setattr(gemv, "_launch", lambda *args: launched.append(args[4]) or launch(*args))
    assert torch.equal(gemv.linear(x, weight), F.linear(x, weight))
    assert launched == [gemv.CUBLAS]  # up to BLAS_TUNED_ROWS, a BLAS plan (the default where nothing is timed)
    monkeypatch.setattr(gemv, "BLAS_TUNED_ROWS", 16)
    assert torch.equal(gemv.linear(x, weight), F.linear(x, weight)) and launched == [gemv.CUBLAS]
    # padded: x's 17 rows run as 32 + pad_rows, y the first 17 of them (cuBLASLt cannot be chosen on a CPU build)
    for plan in (p for p in gemv.BLAS_CANDIDATES if p.path == "cublas"):
        y = gemv.gemv(x, weight, plan=plan)
        assert y.shape == (17, 8) and y.is_contiguous() and torch.equal(y, F.linear(x, weight))
        assert y.untyped_storage().nbytes() == gemv.plan_rows(17, plan) * 8 * y.element_size()
    with pytest.raises(ValueError, match="writes 48 rows of 17, but y has 17"):
        gemv._launch(x, weight, None, torch.empty(17, 8, dtype=x.dtype), gemv.Plan("cublas", 0, 0, pad_rows=16))
    assert not gemv.supports(x[:4].float(), weight.float(), None)  # fp32: no GEMV path
    assert not gemv.supports(x[:4], weight.t().contiguous().t(), None)  # weight without contiguous rows
    with pytest.raises(ValueError, match="at most 4 rows"):
        gemv.gemv(x[:5], weight, plan=gemv.Plan("fma", 4, 64))


def test_tuner_times_plans_in_cuda_graphs_and_falls_back_to_eager(interpreted, monkeypatch):
    gemv = interpreted("gemv")
    from trtllm_compile.kernels import tuning

    plans, ran = gemv.CANDIDATES[1], []
    monkeypatch.setattr(tuning, "tuning_log", {})
    key = (1, 8, 64, torch.bfloat16, torch.bfloat16, torch.device("cpu"))
    args = (key, ran.append, plans)  # "launching" a plan records it

    def graph_ms(fn, device):
        fn()
        if ran[-1] == plans[0]:
            raise RuntimeError("this plan cannot be captured")  # skipped, although it would be fastest
        return 1.0 if ran[-1] == plans[2] else 2.0

    monkeypatch.setattr(tuning, "_graph_ms", graph_ms)
    monkeypatch.setattr(tuning, "_bench_ms", lambda fn: pytest.fail("eager timing while CUDA graphs work"))
    assert tuning._tune(*args) == plans[2]
    assert len(tuning.tuning_log[args[0]]) == len(plans) - 1

    def no_graphs(fn, device):
        raise RuntimeError("CUDA graphs unavailable")

    def bench_ms(fn):
        fn()
        return 0.5 if ran[-1] == plans[1] else 1.0

    monkeypatch.setattr(tuning, "_graph_ms", no_graphs)
    monkeypatch.setattr(tuning, "_bench_ms", bench_ms)
    assert tuning._tune(*args) == plans[1]


def test_tuner_reports_running_out_of_memory(monkeypatch):
    """Out of memory while timing is no reason to skip a plan (every plan would fail): the error names the fix."""
    from trtllm_compile.kernels import tuning

    def graph_ms(fn, device):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(tuning, "_graph_ms", graph_ms)
    monkeypatch.setattr(tuning, "_bench_ms", lambda fn: pytest.fail("an out-of-memory plan was retried eagerly"))
    with pytest.raises(torch.OutOfMemoryError, match="gpu_memory_fraction"):
        tuning._tune((1, 8, 64, torch.device("cpu")), lambda plan: None, ["a", "b"])


@pytest.mark.gpu
def test_tuner_timing_needs_little_more_than_its_l2_sweep():
    """Plans are timed after the KV cache has taken the free memory (a max-load batch captured late), so the timer
    may hold its 256 MiB sweep and the plan's own buffers, nothing of the sweep's size more."""
    from trtllm_compile.kernels import tuning

    device = torch.device("cuda", torch.cuda.current_device())
    x = torch.ones(1 << 20, device=device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    assert tuning._graph_ms(lambda: x.mul_(1.0), device) > 0
    assert torch.cuda.max_memory_allocated(device) - before < tuning._L2_SWEEP_BYTES + (64 << 20)


# ---------------------------------------------------------------- GPU: Llama-2-7B shapes


@pytest.fixture
def gemv_gpu():
    from trtllm_compile.kernels import gemv

    return gemv


@pytest.mark.gpu
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("shape", list(LLAMA_2_7B))
def test_gemv_gpu_llama_2_7b(gemv_gpu, assert_matches, shape, m):
    n, k = LLAMA_2_7B[shape]
    x, weight, _ = _inputs(m, n, k, torch.bfloat16, "cuda")
    out = gemv_gpu.linear(x, weight)  # the bucket's default plan (tests run with TRTLLM_TRITON_AUTOTUNE=0)
    assert_matches(out, _fp32_reference(x, weight, None))
    atol, rtol = GEMM_VS_CUBLAS[x.dtype]
    torch.testing.assert_close(out, F.linear(x, weight), atol=atol, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3, 8, 16])
def test_every_candidate_plan_gpu(gemv_gpu, assert_matches, m):
    """The tuner may pick any candidate: each one is checked (partial K tiles: the default-plan tests and the
    interpreter tests)."""
    n, k = LLAMA_2_7B["o"]
    x, weight, _ = _inputs(m, n, k, torch.bfloat16, "cuda")
    expected = _fp32_reference(x, weight, None)
    for plan in gemv_gpu.CANDIDATES[gemv_gpu.row_bucket(m)]:
        out = gemv_gpu.gemv(x, weight, plan=plan)
        if plan.path == "cublas":  # rounds its own fp32 sum: checked against F.linear's result
            atol, rtol = GEMM_VS_CUBLAS[x.dtype]
            torch.testing.assert_close(out, F.linear(x, weight), atol=atol, rtol=rtol)
        else:
            assert_matches(out, expected)


@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fma", "dot"])
def test_split_k_gpu_is_deterministic_across_launches(gemv_gpu, path):
    """Which split finishes last varies from launch to launch; the result may not (partials summed in split
    order), and every launch must find the counts re-armed: 200 launches back to back, each equal to the first."""
    n, k = LLAMA_2_7B["down"]
    x, weight, _ = _inputs(2, n, k, torch.bfloat16, "cuda")
    plan = gemv_gpu.fma_plan(4, 1024, split_k=8, num_stages=2) if path == "fma" else gemv_gpu.dot_plan(64, 128, 8)
    first = gemv_gpu.gemv(x, weight, plan=plan)
    outs = [gemv_gpu.gemv(x, weight, plan=plan) for _ in range(200)]
    assert all(torch.equal(out, first) for out in outs)
    assert not gemv_gpu.split_counts(x.device).any()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("plan", ["fma", "fma_split", "dot", "dot_split", "cublas", "cublaslt"])
def test_gemv_gpu_bias_and_strided_rows(gemv_gpu, assert_matches, plan, dtype):
    plans = {
        "fma": gemv_gpu.Plan("fma", 4, 1024, num_stages=2),
        "fma_split": gemv_gpu.Plan("fma", 2, 1024, split_k=3),
        "dot": gemv_gpu.Plan("dot", 32, 256),
        "dot_split": gemv_gpu.Plan("dot", 64, 128, split_k=4),
        "cublas": gemv_gpu.CUBLAS,
        "cublaslt": gemv_gpu.CUBLASLT,
    }
    m = 3 if plans[plan].path == "fma" else 11
    x, weight, bias = _inputs(m, 1000, 2880, dtype, "cuda", bias=True, row_stride=3 * 2880)  # a fused QKV row
    out = gemv_gpu.gemv(x, weight, bias, plan=plans[plan])
    if plan in gemv_gpu.BLAS_PATHS:
        atol, rtol = GEMM_VS_CUBLAS[dtype]
        torch.testing.assert_close(out, F.linear(x, weight, bias), atol=atol, rtol=rtol)
    else:
        assert_matches(out, _fp32_reference(x, weight, bias))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64])  # 64 rows: past MAX_ROWS, cuBLAS's mm with an fp32 out_dtype
def test_linear_gpu_fp32_sums(gemv_gpu, m):
    """`linear(..., out_dtype=float32)` returns the fp32 sums of bf16 inputs unrounded, on every path."""
    n, k = LLAMA_2_7B["down"]
    x, weight, _ = _inputs(m, n, k, torch.bfloat16, "cuda")
    expected = F.linear(x.float(), weight.float())
    outs = {"linear": gemv_gpu.linear(x, weight, out_dtype=torch.float32)}
    if m <= gemv_gpu.MAX_ROWS:
        outs |= {str(p): gemv_gpu.gemv(x, weight, plan=p, out_dtype=torch.float32) for p in gemv_gpu.CANDIDATES[m]}
    for name, out in outs.items():
        assert out.dtype == torch.float32, name
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4, msg=lambda msg, name=name: f"{name}: {msg}")


@pytest.mark.gpu
def test_linear_gpu_autotuned_and_captured_in_a_cuda_graph(gemv_gpu, assert_matches, monkeypatch):
    from trtllm_compile.kernels import tuning

    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    n, k = LLAMA_2_7B["o"]
    x, weight, _ = _inputs(2, n, k, torch.bfloat16, "cuda")
    gemv_gpu.linear(x, weight)  # tunes (and caches) the plan of the 2-row bucket outside the capture
    assert (2, n, k, torch.bfloat16, torch.bfloat16, torch.bfloat16, x.device) in tuning.plans
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = gemv_gpu.linear(x, weight)
    x.copy_(torch.randn_like(x))  # new inputs, replayed without host work
    graph.replay()
    torch.cuda.synchronize()
    assert_matches(out, _fp32_reference(x, weight, None))


@pytest.mark.gpu
def test_linear_gpu_times_cublas_against_cublaslt_per_row_count(gemv_gpu, monkeypatch):
    """Past MAX_ROWS each step of 16 rows times both BLAS libraries (a 384-row down GEMM: 73.6 us in cuBLAS, 62.0 in
    cuBLASLt on an H100), on x as it is and padded (a 416-row QKV GEMM: 84.9 us, 61.1 at 432 rows), keeps the
    fastest, and leaves torch's preferred library as it was."""
    from trtllm_compile.kernels import tuning

    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    n, k = LLAMA_2_7B["down"]
    preferred = torch.backends.cuda.preferred_blas_library()
    for m, rows in ((384, 384), (413, 416)):
        x, weight, _ = _inputs(m, n, k, torch.bfloat16, "cuda")
        out = gemv_gpu.linear(x, weight)
        key = (rows, n, k, torch.bfloat16, torch.bfloat16, torch.bfloat16, x.device)
        assert tuning.plans[key] in gemv_gpu.BLAS_CANDIDATES
        assert set(tuning.tuning_log[key]) == {str(plan) for plan in gemv_gpu.BLAS_CANDIDATES}
        assert {"cublas", "cublaslt", "cublas+16", "cublaslt+32"} <= set(tuning.tuning_log[key])
        atol, rtol = GEMM_VS_CUBLAS[x.dtype]
        torch.testing.assert_close(out, F.linear(x, weight), atol=atol, rtol=rtol)
    assert torch.backends.cuda.preferred_blas_library() == preferred


@pytest.mark.gpu
def test_trtllm_linear_dispatches_by_rows_gpu(cuda_ops, assert_matches, monkeypatch):
    from trtllm_compile.kernels import gemv

    launches = []
    launch = gemv._launch
    monkeypatch.setattr(gemv, "_launch", lambda *args: launches.append(args[0].shape[0]) or launch(*args))
    n, k = LLAMA_2_7B["qkv"]
    for m, uses_gemv in ((1, True), (16, True), (17, True), (gemv.BLAS_TUNED_ROWS + 1, False)):
        x, weight, bias = _inputs(m, n, k, torch.bfloat16, "cuda", bias=True)
        launches.clear()
        out = cuda_ops.linear(x.view(1, m, k), weight, bias)
        assert out.shape == (1, m, n)
        assert launches == ([m] if uses_gemv else []), (
            'trtllm::linear did not reach kernels/gemv.py: register_cuda_kernels() needs "trtllm::linear": gemv.linear'
        )
        atol, rtol = GEMM_VS_CUBLAS[x.dtype]
        torch.testing.assert_close(out.view(m, n), F.linear(x, weight, bias), atol=atol, rtol=rtol)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 16, 17, 200])  # every GEMV bucket kind, and the GEMM tile past 16 rows
def test_fixed_plans_compute_every_column_shard_bit_for_bit_gpu(gemv_gpu, assert_matches, m):
    """Inside kernels.fixed_plans() the plan follows the row count only: the first half of W's rows gives
    exactly the first half of the outputs (what tensor-parallel invariance needs), and both are right."""
    from trtllm_compile.kernels import fixed_plans

    n, k = LLAMA_2_7B["qkv"]
    x, weight, bias = _inputs(m, n, k, torch.bfloat16, "cuda", bias=True, row_stride=2 * k)
    with fixed_plans():
        full = gemv_gpu.linear(x, weight, bias)
        half = gemv_gpu.linear(x, weight[: n // 2], bias[: n // 2])
        sums = gemv_gpu.linear(x, weight[: n // 2], out_dtype=torch.float32)
    assert torch.equal(half, full[:, : n // 2])
    assert_matches(full, _fp32_reference(x, weight, bias))
    torch.testing.assert_close(sums, F.linear(x.float(), weight[: n // 2].float()), atol=1e-4, rtol=1e-4)
    assert gemv_gpu.fixed_plan(m).split_k == 1 and gemv_gpu.fixed_plan(m).path != "cublas"
