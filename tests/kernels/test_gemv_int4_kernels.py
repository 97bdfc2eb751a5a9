"""INT4 weight-only GEMMs (kernels/int4_gemv.py on gemv.py's kernels) against float64 GEMMs of the dequantized
weight, and `trtllm::int4_linear` taking them on CUDA.

Tolerance. A path multiplies either the exact dequantized weight (q - z) * s (fma, and dot tiles of fewer rows
than K: codes minus zero points and their products with x are exact, the group scale multiplies fp32 sums) or,
as `int4_linear_reference` does, that weight rounded to x's dtype (dot GEMM tiles, dequantize + cuBLAS:
`_rounds_weights`). Against a float64 GEMM of the weight it uses, a path differs only by its fp32 summation
order (~1e-6 relative here) and its one rounding to the output dtype: one ulp, the "elementwise" tolerance of
conftest.py (plus the interpreter's truncating bf16 casts on CPU). Weights are ~N(0, 1/K), so outputs are
~N(0, 1) and the absolute part of that tolerance is one ulp at 1. The exact-weight paths differ from the
reference itself by its weight rounding too (up to 2**-9 of each product in bf16): the op-level tests in
tests/quantization/test_quant_gpu.py bound that with GPU_RTOL.
"""

from __future__ import annotations

import math
import shutil
import subprocess

import pytest
import torch

from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.ops.quant import dequantize_int4, pack_int4
from trtllm_compile.quantization.formats import int4_codes

LLAMA_2_7B = layer_gemms("llama-2-7b")


def _operands(m: int, n: int, k: int, group_size: int, zero_point: bool, dtype, device, bias: bool = False):
    """x [m, k], the packed INT4 weight [n, k / 2] of a ~N(0, 1/k) weight with its scales and zeros, a bias."""
    gen = torch.Generator().manual_seed(m * 7919 + n + k + group_size)
    codes, scales, zeros = int4_codes(torch.randn(n, k, generator=gen) / math.sqrt(k), group_size, zero_point)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    b = torch.randn(n, generator=gen).to(device, dtype) if bias else None
    zeros = zeros.to(device) if zeros is not None else None
    return x, pack_int4(codes).to(device), scales.to(device), zeros, group_size, b


def _float64_reference(x, packed, scales, zeros, group_size, bias, rounds_weights: bool):
    """x @ W^T + bias in float64, W the dequantized weight (rounded to x's dtype first if `rounds_weights`),
    rounded once to x's dtype."""
    weight = dequantize_int4(packed, scales, zeros, group_size)
    weight = weight.to(x.dtype).double() if rounds_weights else weight.double()
    out = x.double() @ weight.T
    return (out + bias.double() if bias is not None else out).to(x.dtype)


# The hfma path (one row) multiplies and sums in fp16: each word's eight products and each tile's addition to its
# accumulator round to fp16 (2^-11 of the partial sum), which leaves up to about four fp16 ulps at the output's
# magnitude (~2e-3 measured at K = 4096, 8 tiles a split). For a bf16 output that is half an ulp, within one.
# The mma path sums x (1024 + q) in fp32 and takes (1024 + z) sum(x) off a group's sum (bf16 x: 128): the
# cancellation leaves 2^-24 * 1032 * sum |x| of each group, ~1e-4 of a ~N(0, 1) output here; in bf16 far below
# an ulp, in fp16 within this tolerance too.
HFMA_FP16_TOLERANCE = (4e-3, 4e-3)


def _assert_plan_matches(assert_matches, plan, out, expected) -> None:
    if plan.path in ("hfma", "mma") and out.dtype == torch.float16:
        torch.testing.assert_close(out.cpu(), expected.cpu(), atol=HFMA_FP16_TOLERANCE[0], rtol=HFMA_FP16_TOLERANCE[1])
    else:
        assert_matches(out, expected)


def _rounds_weights(plan) -> bool:
    """Whether a (fitted) plan rounds each dequantized weight to x's dtype: dequantize + cuBLAS, and dot tiles
    with BLOCK_M >= BLOCK_K (gemv._gemv_dot_kernel scales those weights, not the tiles' sums)."""
    return plan.path == "cublas" or (plan.path == "dot" and plan.block_m >= plan.block_k)


# ---------------------------------------------------------------- CPU: Triton's interpreter, tiny shapes

SMALL_PLANS = {  # small tiles so the interpreter runs fast; every path and variant
    "fma": dict(path="fma", block_n=16, block_k=64, num_warps=1),
    "fma_prefetch": dict(path="fma", block_n=8, block_k=64, num_stages=2),
    "fma_split3_prefetch": dict(path="fma", block_n=8, block_k=32, split_k=3, num_stages=2),
    "dot": dict(path="dot", block_n=16, block_k=64),
    "dot_split3": dict(path="dot", block_n=16, block_k=32, split_k=3),
    "dot_gemm": dict(path="dot", block_n=16, block_k=32, block_m=32),  # more rows a tile than K: rounds weights
    "dequantize_cublas": dict(path="cublas", block_n=0, block_k=0),
    "hfma": dict(path="hfma", block_n=16, block_k=64, num_warps=1),
    "hfma_split3_prefetch": dict(path="hfma", block_n=8, block_k=32, split_k=3, num_stages=2),
    "hfma_subtiles": dict(path="hfma", block_n=8, block_k=512, num_warps=1),  # tiles of 2 to 8 groups, past K
}
GROUPS = {  # group size -> (K, zero points, x dtype): K = 200 ends in a short group and a partial K tile
    "g64_k200_zeros_bf16": (64, 200, True, torch.bfloat16),
    "g64_k200_symmetric_fp16": (64, 200, False, torch.float16),
    "g128_k256_zeros_fp16": (128, 256, True, torch.float16),
    "g128_k256_symmetric_bf16": (128, 256, False, torch.bfloat16),
}


@pytest.mark.parametrize("m", [1, 3, 16])
@pytest.mark.parametrize("groups", list(GROUPS))
@pytest.mark.parametrize("plan", list(SMALL_PLANS))
def test_int4_gemv_interpreted(interpreted, assert_matches, plan, groups, m):
    int4_gemv = interpreted("int4_gemv")
    plan = int4_gemv.fit(int4_gemv.Plan(**SMALL_PLANS[plan]), GROUPS[groups][0])
    if (plan.path == "fma" and m > 4) or (plan.path == "hfma" and m > 1):
        pytest.skip(f"the {plan.path} path takes at most {4 if plan.path == 'fma' else 1} rows")
    group_size, k, zero_point, dtype = GROUPS[groups]
    args = _operands(m, 40, k, group_size, zero_point, dtype, "cpu", bias=m == 3)  # N = 40: a partial N tile
    assert int4_gemv.supports(*args)
    out = int4_gemv.int4_linear(*args, plan=plan)
    _assert_plan_matches(assert_matches, plan, out, _float64_reference(*args, rounds_weights=_rounds_weights(plan)))


def test_int4_linear_interpreted_strided_rows_leading_dims_and_default_plans(interpreted, assert_matches):
    int4_gemv = interpreted("int4_gemv")
    x, packed, scales, zeros, group_size, bias = _operands(6, 48, 256, 128, True, torch.bfloat16, "cpu", bias=True)
    rows = torch.empty(6, 320, dtype=x.dtype)[:, :256].copy_(x).view(2, 3, 256)  # rows of a wider buffer
    assert not rows.is_contiguous() and int4_gemv.supports(rows, packed, scales, zeros, group_size, bias)
    out = int4_gemv.int4_linear(rows, packed, scales, zeros, group_size, bias)  # the 8-row bucket's default
    assert out.shape == (2, 3, 48)
    expected = _float64_reference(x, packed, scales, zeros, group_size, bias, rounds_weights=False)
    assert_matches(out.view(6, 48), expected)
    more_rows = torch.cat([x] * 6)  # 36 rows: the 64-row bucket's default, a GEMM tile
    default = int4_gemv.candidates(36, group_size)[0]
    expected = _float64_reference(more_rows, packed, scales, zeros, group_size, bias, _rounds_weights(default))
    assert_matches(int4_gemv.int4_linear(more_rows, packed, scales, zeros, group_size, bias), expected)


def test_dequantize_interpreted_is_the_reference_weight(interpreted):
    int4_gemv = interpreted("int4_gemv")
    _, packed, scales, zeros, group_size, _ = _operands(1, 40, 200, 64, True, torch.float16, "cpu")
    int4 = int4_gemv.Int4Weights(scales, zeros, group_size)
    out = int4_gemv.dequantize(packed.view(torch.int32), int4, torch.float16)
    assert torch.equal(out, dequantize_int4(packed, scales, zeros, group_size).to(torch.float16))


def test_int4_supports_and_plan_fitting(interpreted):
    int4_gemv = interpreted("int4_gemv")
    x, packed, scales, zeros, group_size, _ = _operands(2, 16, 256, 64, True, torch.bfloat16, "cpu")
    assert int4_gemv.supports(x, packed, scales, zeros, group_size, None)
    assert int4_gemv.supports(torch.cat([x] * 300), packed, scales, zeros, group_size, None)  # prefill rows too
    assert not int4_gemv.supports(x.float(), packed, scales, zeros, group_size, None)  # fp32 x: the reference
    assert not int4_gemv.supports(x, packed, scales[:, :2], zeros, group_size, None)  # scales of another group
    assert not int4_gemv.supports(x[:, :116], packed[:, :58], scales[:, :2], None, 64, None)  # K % 8 != 0
    assert not int4_gemv.supports(x, packed, scales.repeat(1, 8), None, 8, None)  # group 8: no tensor-core K
    assert not int4_gemv.supports(x[:, :128], packed[:, 2:66], scales[:, :2], None, 64, None)  # not in words
    assert int4_gemv.fit(int4_gemv.Plan("dot", 64, 128), 64).block_k == 64
    assert int4_gemv.fit(int4_gemv.Plan("dot", 64, 128), 576).block_k == 64  # 576 = 64 * 9
    for rows in (1, 3, 16, 17, 200, 4000):
        plans = int4_gemv.candidates(rows, 32)
        # a tile (an hfma sub-tile) lies in one group
        fitted = [p.block_k % 32 == 0 if p.path == "hfma" else p.path == "cublas" or 32 % p.block_k == 0 for p in plans]
        assert all(fitted) and len(set(plans)) == len(plans)
    hfma = int4_gemv.hfma_plan(16, block_k=512)
    assert int4_gemv.fit(hfma, 64) == hfma  # sub-tiles of 64 in one tile
    with pytest.raises(ValueError, match="the hfma path takes one row"):
        int4_gemv.int4_linear(x, packed, scales, zeros, group_size, plan=hfma)
    mma = int4_gemv.mma_plan(1, 1, 8)
    assert int4_gemv.fit(mma, 128) == mma and mma not in int4_gemv.candidates(1, 64)  # groups of whole 128s only
    with pytest.raises(ValueError, match="the mma path takes one row"):
        int4_gemv.int4_linear(x, packed, scales, zeros, group_size, plan=mma)
    with pytest.raises(ValueError, match="Triton's interpreter cannot run"):
        int4_gemv.int4_linear(x[:1], packed, scales, zeros, group_size, plan=mma)
    with pytest.raises(ValueError, match="BLOCK_K must divide 64"):
        int4_gemv.gemv._launch(x, packed.view(torch.int32), None, x.new_empty(2, 16), int4_gemv.Plan("dot", 16, 128),
                               int4_gemv.Int4Weights(scales, zeros, 64))  # fmt: skip


# The hfma path's inline PTX cannot run in Triton's interpreter (it runs the same steps in Triton's ops): compile
# the kernel for sm_90 with Triton's own ptxas, for each x dtype and mask, and read what it became.
_COMPILE_HFMA = r"""
from trtllm_compile.kernels import int4_gemv

kernel = int4_gemv._int4_hfma_kernel
types = ["*i32", "*i32", "*bf16", "*bf16", "*fp32", "*i32"] + ["i32"] * 4 + ["*bf16", "*bf16", "i32"]
counts = {}
variants = [(True, True, True, True), (False, False, True, False), (True, False, False, True)]
for x_bf16, even_k, sub_even_k, prefetch in variants:
    constexprs = dict(HAS_BIAS=True, SPLIT=True, EVEN_K=even_k, SUB_EVEN_K=sub_even_k, PREFETCH=prefetch, BLOCK_N=16,
                      BLOCK_K=256, SUB_K=128, HAS_ZEROS=True, GROUP_SIZE=128, X_BF16=x_bf16, ASM=True, PDL=True)
    text = ptx(kernel, types, constexprs, num_warps=1, aligned=(0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12))
    # 0f3D800000 / 0x2C002C00: HFMA_X_SCALE as the bf16 (fp32) and fp16 (fp16x2) x conversions write it
    ops = ("lop3.b32", "fma.rn.f16x2", "ld.global.nc.b16", "0f3D800000", "0x2C002C00", "st.local")
    counts[f"bf16={x_bf16} even={even_k}"] = {op: text.count(op) for op in ops}
print(json.dumps(counts))
"""


def test_hfma_kernel_compiles_its_inline_ptx_for_sm90(sm90_ptx):
    for variant, count in sm90_ptx(_COMPILE_HFMA).items():
        # a tile of 16 rows x 32 words in one warp: 16 words a thread, 4 LOP3 and 9 fp16x2 FMAs each (the PTX
        # may repeat the inline asm per loop copy, never drop it); scales and zero points by `_load_nc`
        assert count["lop3.b32"] >= 64 and count["fma.rn.f16x2"] >= 16 * 8, (variant, count)
        assert count["ld.global.nc.b16"] >= 2, (variant, count)
        assert count["st.local"] == 0, (variant, count)  # no register spills
        bf16 = variant.startswith("bf16=True")  # bf16 x is scaled in fp32, fp16 x in pairs
        assert (count["0f3D800000"] > 0, count["0x2C002C00"] > 0) == (bf16, not bf16), (variant, count)


def test_mma_kernel_compiles_for_sm90_without_spills(interpreted):
    """int4_gemv_mma.cu cannot run here (it is CUDA, not Triton): compile each one-row mma plan's instance and each
    gated plan's (SwiGLU; the other activations with the first gated plan), for both x dtypes, with the CUDA
    toolkit's nvcc for sm_90 and read ptxas's report. The GPU tests run them."""
    if shutil.which("nvcc") is None:
        pytest.skip("no CUDA toolkit here (nvcc): the GPU tests compile the kernel with NVRTC")
    int4_gemv = interpreted("int4_gemv")
    plans = [(plan, None) for plan in int4_gemv.candidates(1, 128) if plan.path == "mma"]
    plans += [(plan, "silu") for plan in int4_gemv.GATED_CANDIDATES]
    plans += [(int4_gemv.GATED_CANDIDATES[0], activation) for activation in ("gelu", "gelu_tanh", "relu")]
    names = [
        int4_gemv.mma_kernel_name(x_dtype, torch.bfloat16, True, True, 128, plan, True, activation)
        for plan, activation in plans
        for x_dtype in (torch.bfloat16, torch.float16)
    ]
    kept = ", ".join(f"(void*)&{name}" for name in names)  # a host reference instantiates each
    source = int4_gemv._MMA_SOURCE.read_text() + f"\nstatic void* const kept[] = {{{kept}}};\n"
    command = ["nvcc", "-arch=sm_90", "-std=c++17", "-cubin", "-o", "/dev/null", "-Xptxas", "-v", "-x", "cu", "-"]
    done = subprocess.run(command, input=source, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("Compiling entry function") == len(names) == 2 * len(plans) > 0
    assert done.stderr.count("0 bytes spill stores, 0 bytes spill loads") == len(names), done.stderr


# ---------------------------------------------------------------- GPU: Llama-2-7B shapes


@pytest.fixture
def int4_gpu():
    from trtllm_compile.kernels import int4_gemv

    return int4_gemv


@pytest.mark.gpu
@pytest.mark.parametrize("zero_point", [True, False], ids=["zeros", "symmetric"])
@pytest.mark.parametrize("m", [1, 4, 16])
@pytest.mark.parametrize("shape", list(LLAMA_2_7B))
def test_int4_gemv_gpu_llama_2_7b(int4_gpu, assert_matches, shape, m, zero_point):
    args = _operands(m, *LLAMA_2_7B[shape], 128, zero_point, torch.bfloat16, "cuda")
    out = int4_gpu.int4_linear(*args)  # the bucket's default plan (tests run with TRTLLM_TRITON_AUTOTUNE=0)
    default = int4_gpu.candidates(m, 128)[0]
    assert_matches(out, _float64_reference(*args, rounds_weights=_rounds_weights(default)))


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 3, 8, 16, 33, 64, 200, 600])
def test_every_int4_candidate_plan_gpu(int4_gpu, assert_matches, m):
    """The tuner may pick any candidate: each one is checked, with a bias, fp16 and group 64 (the shapes'
    partial tiles: the interpreter tests)."""
    n, k = LLAMA_2_7B["down"]
    args = _operands(m, n, k, 64, True, torch.float16, "cuda", bias=True)
    expected = {rounds: _float64_reference(*args, rounds_weights=rounds) for rounds in (False, True)}
    for plan in int4_gpu.candidates(m, 64):
        out = int4_gpu.int4_linear(*args, plan=plan)
        _assert_plan_matches(assert_matches, plan, out, expected[_rounds_weights(plan)])


MMA_OPERANDS = {  # x dtype, scales' dtype, zero points, bias, group size, N (a partial row block or not), K
    "bf16_bf16_scales_zeros_bias": (torch.bfloat16, torch.bfloat16, True, True, 128, 4100, 4096),
    "fp16_fp32_scales_symmetric_g256": (torch.float16, torch.float32, False, False, 256, 1000, 11008),
    "fp16_fp16_scales_zeros_bias": (torch.float16, torch.float16, True, True, 128, 12288, 4096),
    "bf16_fp32_scales_symmetric": (torch.bfloat16, torch.float32, False, False, 128, 4096, 11008),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(MMA_OPERANDS))
def test_every_mma_plan_gpu(int4_gpu, assert_matches, case):
    """int4_gemv_mma.cu's plans (one row, on the tensor cores) against the exact dequantized weight."""
    x_dtype, scale_dtype, zero_point, bias, group_size, n, k = MMA_OPERANDS[case]
    x, packed, scales, zeros, _, b = _operands(1, n, k, group_size, zero_point, x_dtype, "cuda", bias=bias)
    scales, zeros = scales.to(scale_dtype), zeros.to(scale_dtype) if zeros is not None else None
    expected = _float64_reference(x, packed, scales, zeros, group_size, b, rounds_weights=False)
    plans = [plan for plan in int4_gpu.candidates(1, group_size) if plan.path == "mma"]
    assert plans
    for plan in plans:
        out = int4_gpu.int4_linear(x, packed, scales, zeros, group_size, b, plan=plan)
        _assert_plan_matches(assert_matches, plan, out, expected)


GATED_OPERANDS = {  # x dtype, scales' dtype, zero points, bias, group size, outputs I (partial blocks), K, activation
    "bf16_silu_bf16_scales_zeros_bias": (torch.bfloat16, torch.bfloat16, True, True, 128, 11008, 4096, "silu"),
    "fp16_silu_fp32_scales_symmetric_g256": (torch.float16, torch.float32, False, False, 256, 1000, 2048, "silu"),
    "bf16_gelu_tanh_fp32_scales_zeros": (torch.bfloat16, torch.float32, True, False, 128, 1000, 2048, "gelu_tanh"),
    "fp16_gelu_fp16_scales_zeros_bias": (torch.float16, torch.float16, True, True, 128, 1000, 2048, "gelu"),
    "bf16_relu_bf16_scales_symmetric": (torch.bfloat16, torch.bfloat16, False, False, 128, 1000, 2048, "relu"),
}


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(GATED_OPERANDS))
def test_every_gated_plan_gpu(int4_gpu, case):
    """A gated plan (`int4_gated_linear`) computes what its plain plan's [gate; up] GEMM and eager PyTorch's
    activation of the two halves compute: SwiGLU and ReLU to the bit (the same fp32 sums, the same expf and
    roundings), GELU within an ulp of x's dtype (erff / tanhf as PyTorch's kernels call them, whose compiler may
    contract their products otherwise)."""
    from trtllm_compile.ops.mlp import mlp_activation_reference

    x_dtype, scale_dtype, zero_point, bias, group_size, outputs, k, activation = GATED_OPERANDS[case]
    x, packed, scales, zeros, _, b = _operands(1, 2 * outputs, k, group_size, zero_point, x_dtype, "cuda", bias=bias)
    scales, zeros = scales.to(scale_dtype), zeros.to(scale_dtype) if zeros is not None else None
    assert int4_gpu.supports_gated(x, packed, scales, zeros, group_size, b, activation)
    for plan in int4_gpu.GATED_CANDIDATES:
        y = int4_gpu.int4_linear(x, packed, scales, zeros, group_size, b, plan=plan)
        expected = mlp_activation_reference(y[..., :outputs], y[..., outputs:], activation)
        out = int4_gpu.int4_gated_linear(x, packed, scales, zeros, group_size, b, activation, plan=plan)
        if activation in ("silu", "relu"):
            assert torch.equal(out, expected), (plan, (out - expected).abs().max())
        else:
            ulp = torch.finfo(x_dtype).eps
            torch.testing.assert_close(out, expected, rtol=ulp, atol=ulp * 2**-4, msg=lambda m, p=plan: f"{p}: {m}")


@pytest.mark.gpu
def test_int4_linear_op_runs_on_the_kernels_in_a_cuda_graph(int4_gpu, assert_matches, monkeypatch):
    """`trtllm::int4_linear` on CUDA, for decode rows and a GEMM's: tuned outside a capture, replayed from a CUDA
    graph with new inputs, never the reference."""
    from trtllm_compile.ops import quant

    def reference(*args):
        raise AssertionError("trtllm::int4_linear ran its reference on CUDA")

    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    monkeypatch.setattr(quant, "int4_linear_reference", reference)
    n, k = LLAMA_2_7B["qkv"]
    for m in (1, 64):
        x, *weights = _operands(m, n, k, 128, True, torch.bfloat16, "cuda", bias=True)
        torch.ops.trtllm.int4_linear(x, *weights)  # tunes the plan outside the capture
        plan = int4_gpu.tuning.plans[(m, n, k, x.dtype, "int4", 128, True, x.device)]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = torch.ops.trtllm.int4_linear(x, *weights)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        assert_matches(out, _float64_reference(x, *weights, rounds_weights=_rounds_weights(plan)))
