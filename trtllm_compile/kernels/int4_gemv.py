"""INT4 weight-only GEMMs: the CUDA implementation of `trtllm::int4_linear` (see `ops.quant.int4_linear`).

The weight is read in the op's own format, with no repacked copy: [N, K / 2] uint8, element 2i in the low
nibble of byte i and 2i + 1 in the high one, which read as little-endian int32 is [N, K / 8] words holding
elements 8i..8i + 7 in bits 4j..4j + 3. Scales and integer zero points are per row and group of `group_size`
along K (no zero points: 8). One row (batch-1 decode) has two kernels of its own here, the mma and hfma paths;
the others are gemv.py's, given `gemv.Int4Weights` (with its launcher, its split-K reduction in the kernel, and
kernels/tuning.py's plan tuner):

- mma path (one row, groups and K of whole 128s; `int4_gemv_mma.cu`, CUDA C++ through kernels/nvrtc.py): the
  tensor cores take each lane's codes in the operand slots it holds, as loaded, with x in the matching slots
  of every column of B (a GEMV's sum does not care in which order K is taken), so no shuffle, no shared
  memory and no conversion of x; 7 instructions a word (3 shifts, 4 LOP3 into bf16 / fp16 magic numbers) and
  one MMA, the magic and zero point taken off once a group with an MMA of x against ones. Sums are fp32.
  Triton cannot place operands in MMA fragments from registers loaded this way. The fastest one-row path on an
  H100: 48.6 us a Llama-2-7B layer against hfma's 62.1 (docs/benchmarks.md run 52, 8 back-to-back launches).
  Its gated form is `trtllm::int4_gated_linear` (`int4_gated_linear`): a gated MLP's [gate; up] GEMM with the
  activation in its epilogue, each block holding an output's gate and up rows.

- hfma path (one row, `_int4_hfma_kernel`, the default there): fp16 math on CUDA cores in inline PTX, 14
  instructions per word of eight weights (`_hfma_words`: the magic-number dequantization of LOP3 into fp16
  1024, then packed fp16 FMAs), against ~6 a weight for the fp32 fma path, whose instructions bounded it. x is
  converted once per tile into fp16 pairs in the order the words unpack (`_x_pairs`). A tile is BLOCK_N rows of
  BLOCK_K, side-by-side sub-tiles of one group each, so a row's load is 128-256 contiguous bytes: tiles of one
  group (64 bytes a row) reached ~1.3 TB/s where these reach up to 2 TB/s (docs/benchmarks.md runs 40-48).
  Scales and zero points are loaded by inline asm in the layout that uses them (`_load_nc`): tl.load's
  re-layout for coalescing cost a shared-memory round trip and barriers per tile.

- Each program owns BLOCK_N weight rows and walks K in tiles of whole words, loaded up to 16 bytes a thread and
  streamed once (evict-first). A tile lies in one group (BLOCK_K divides the group size), so each row's scale
  and zero point are loaded once a tile. `gemv.int4_codes` turns a word into eight fp32 codes minus the zero
  point with a shift, a LOP3 and an FADD each: the code is OR-ed into the mantissa of 2^23 and 2^23 + zero
  subtracted, with no int -> float conversion (a quarter-rate instruction).
- fma path (up to 4 rows): CUDA-core FMAs in fp32. The eight products of a word are summed in the thread and
  the group scale multiplies that sum once: sum_k x_k s_g (q_k - z_g) = s_g * sum_k x_k (q_k - z_g).
- dot path (any rows): the codes minus zero points, exact in bf16/fp16, meet x on the tensor cores (fp32
  sums) and each tile's sums are scaled once by their group's scales. Above 16 rows the same kernel takes
  BLOCK_M = 32..128 rows a program: a GEMM that dequantizes each W tile into the tensor cores and so reads
  half a byte a weight, where dequantizing to bf16 first would read 0.5, write 2 and read 2 again. For
  batched decode (17..256 rows) the GEMM is still bound by the weight stream, so that is the default there;
  from 512 rows (prefill) it is compute-bound and the default is `DEQUANTIZE_CUBLAS`: a Triton kernel writes
  the weight in x's dtype, then cuBLAS, whose tiles should beat these untuned ones once the dequantization
  is shared by 512+ rows. Neither choice is measured yet: the tuner times both from 32 rows on.

Numerics: codes minus zero points and products are exact; sums are fp32, rounded once to x's dtype after the
bias (hfma: sums of a word's products, and accumulators of up to HFMA_MAX_TILES tiles, round to fp16, a few
fp16 ulps of the output; x and the scales are rounded to fp16, exact for bf16 values in fp16's normal range).
The reference instead rounds each dequantized weight (q - z) * s to x's dtype before its GEMM (so do
`DEQUANTIZE_CUBLAS` and the dot path's GEMM tiles, identically), which moves each product by up to one ulp
of x's dtype: tests/kernels/test_gemv_int4_kernels.py states the tolerance this gives.

torch's tinygemm (`ops.quant.int4_linear_tinygemm`) is off this path, and the hfma path beats it at one row
(67.7 against 76.8 us a Llama-2-7B layer on an H100, docs/benchmarks.md run 48; the fp32 fma path: 95.8). It
reads a repacked second copy of the weight, made on first use, after the KV cache has taken the free memory; as
a tuner plan it made `bench --quantization int4_awq` fail every plan at 4 rows after the batch-256 CUDA graphs
(run 19). These kernels take every shape it takes; what they cannot take (K % 8 != 0, a group size without a
factor of 16, fp32 activations) runs the op's PyTorch reference.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import gemv, is_interpreted, nvrtc, pdl, rows_view, tuning
from trtllm_compile.kernels.activation import ACTIVATION_IDS
from trtllm_compile.kernels.gemv import CUBLAS, HALF_DTYPES, Int4Weights, Plan, dot_plan, fma_plan, int4_codes, w_tile

# Dequantize the weight to x's dtype in a Triton kernel, then cuBLAS (a plan of the INT4 candidates).
DEQUANTIZE_CUBLAS = CUBLAS
MIN_BLOCK_K = 16  # the tensor cores' K: a group size needs a power-of-two factor this large
_LARGEST_BUCKET = 512  # every bucket of more rows shares its candidates

# Candidates per M bucket (next power of two of M), the first being the default when tuning is off. Written
# for group size 128 (BLOCK_K is cut to divide a smaller group, `fit`), not yet timed on a GPU: fma tiles of
# 32 to 128 rows (BLOCK_K <= group, so rows give a program its work), dot tiles of 64 to 256 rows, split-K for
# the narrow N of o_proj and down_proj (4096 rows: 32..64 programs without it). Dot plans lead: compiled for
# sm_90 (triton 3.6 and 3.9), their loops cost 5.8-6.7 instructions a weight at any row count up to 16, the
# fma loops 6.6-6.8 at one row and 15-16 at four, and dequantizing is what bounds these kernels.
_DOT_PLANS = [
    dot_plan(64, 128, split_k=4),
    dot_plan(128, 128, num_stages=3),
    dot_plan(128, 128, split_k=4, num_stages=3),
    dot_plan(64, 128),
    dot_plan(256, 128, num_warps=8, num_stages=3),
    dot_plan(128, 64, split_k=8, num_stages=5),
]


def hfma_plan(block_n, split_k=1, num_warps=4, num_stages=2, block_k=128) -> Plan:
    return Plan("hfma", block_n, block_k, split_k, num_warps, num_stages)


# One row: fp16 math on CUDA cores (`_int4_hfma_kernel`). The fastest on an H100 at the Llama-2-7B GEMMs in a
# sweep of 48 and one of 10 (docs/benchmarks.md runs 41 and 47): one-warp programs of 8 to 16 rows, rows of 256
# to 512 K (128 to 256 bytes a load), enough programs (and K splits) for every SM to hold several.
_HFMA_PLANS = [
    hfma_plan(16, block_k=256, split_k=8, num_warps=1, num_stages=1),
    hfma_plan(8, block_k=256, split_k=8, num_warps=1, num_stages=1),
    hfma_plan(8, block_k=512, split_k=1, num_warps=1),
    hfma_plan(8, block_k=512, split_k=4, num_warps=1, num_stages=1),
    hfma_plan(16, block_k=256, split_k=4, num_warps=1, num_stages=1),
    hfma_plan(16, block_k=512, split_k=1, num_warps=1, num_stages=1),
    hfma_plan(32, block_k=512, split_k=4, num_warps=2, num_stages=1),
]


def mma_plan(row_blocks: int, steps: int, num_warps: int, prefetch: bool = False) -> Plan:
    """A plan of `int4_gemv_mma.cu`: warps of `row_blocks` 16-row blocks, `steps` K steps of MMA_K_STEP a turn (and
    with `prefetch` the next turn's loads in flight during its math: two stages)."""
    return Plan("mma", 16 * row_blocks, MMA_K_STEP * steps, num_warps=num_warps, num_stages=2 if prefetch else 1)


MMA_K_STEP = 128  # int4_gemv_mma.cu's K_STEP: the group size must be a multiple, and K
# One row on the tensor cores (`_launch_mma`): the fastest of 26 at each Llama-2-7B GEMM on an H100, each GEMM
# timed as 8 back-to-back launches (docs/benchmarks.md run 52): 16 to 32 rows a block, 4 to 16 warps taking
# turns along K, 128 to 256 bytes of each row a turn.
_MMA_PLANS = [
    mma_plan(2, 2, 4),
    mma_plan(1, 1, 8, prefetch=True),
    mma_plan(2, 1, 16),
    mma_plan(1, 2, 8),
    mma_plan(2, 1, 4, prefetch=True),
]
# A gated MLP's gate/up GEMM with its activation as the epilogue (`int4_gated_linear`, one row): mma plans of an
# even number of row blocks, half gate rows and half the up rows of the same outputs. The first is the one the
# tuner took at the Llama-2-7B gate/up GEMM on an H100 (docs/benchmarks.md run 71).
GATED_CANDIDATES = [
    mma_plan(2, 1, 4, prefetch=True),
    mma_plan(2, 2, 4),
    mma_plan(2, 1, 8, prefetch=True),
    mma_plan(2, 1, 16),
    mma_plan(4, 1, 8),
]
_FMA_PLANS = [  # up to 4 rows; 128-row tiles only for one row (two or more spill registers)
    fma_plan(64, 128, num_warps=8, num_stages=2),
    fma_plan(64, 128, num_stages=2),
    fma_plan(32, 128, split_k=4, num_stages=2),
    fma_plan(64, 128, split_k=4, num_stages=2),
]
_GEMM_64 = [dot_plan(128, 64, block_m=64, num_stages=4), dot_plan(64, 64, block_m=64, split_k=2, num_stages=4)]
_GEMM_128 = [
    dot_plan(128, 64, block_m=128, num_warps=8, num_stages=3),
    dot_plan(256, 64, block_m=128, num_warps=8, num_stages=3),
]
INT4_CANDIDATES: dict[int, list[Plan]] = {
    1: [*_HFMA_PLANS, *_MMA_PLANS, *_DOT_PLANS, *_FMA_PLANS, fma_plan(128, 128, num_stages=2)],
    2: [*_DOT_PLANS, *_FMA_PLANS],
    4: [*_DOT_PLANS, *_FMA_PLANS],
    8: _DOT_PLANS,
    16: _DOT_PLANS,
    32: [dot_plan(128, 64, block_m=32), dot_plan(64, 64, block_m=32, split_k=2), *_GEMM_64, DEQUANTIZE_CUBLAS],
    64: [*_GEMM_64, *_GEMM_128, DEQUANTIZE_CUBLAS],
    128: [*_GEMM_64, *_GEMM_128, DEQUANTIZE_CUBLAS],
    256: [*_GEMM_128, *_GEMM_64, DEQUANTIZE_CUBLAS],
    _LARGEST_BUCKET: [DEQUANTIZE_CUBLAS, *_GEMM_128],
}


def supports(
    x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, bias: Tensor | None
) -> bool:
    """Whether `int4_linear` runs this GEMM: a half-precision x [..., K] of at least one row; the packed weight
    [N, K / 2] uint8 with K % 8 == 0 and rows of whole int32 words; a group size with a power-of-two factor of
    at least MIN_BLOCK_K; scales (and zeros) [N, ceil(K / group_size)]; on a GPU (or Triton's interpreter)."""
    if x.dtype not in HALF_DTYPES or weight.dtype != torch.uint8 or weight.dim() != 2 or x.dim() == 0:
        return False
    n, k = weight.shape[0], weight.shape[1] * 2
    if n == 0 or k % 8 or x.shape[-1] != k or x.numel() == 0 or (group_size & -group_size) < MIN_BLOCK_K:
        return False
    if weight.stride(1) != 1 or weight.stride(0) % 4 or weight.storage_offset() % 4:
        return False  # not viewable as int32 words
    groups = (n, -(-k // group_size))
    if tuple(scales.shape) != groups or (zeros is not None and tuple(zeros.shape) != groups):
        return False
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (n,)):
        return False
    return x.device.type == "cuda" or INTERPRETED


def fit(plan: Plan, group_size: int) -> Plan:
    """`plan` with BLOCK_K cut to the largest power of two dividing the group size, if larger (a tile lies in
    one group), but for hfma and mma plans (their tiles are sub-tiles of one group each)."""
    if plan.path in ("hfma", "mma"):
        return plan
    block_k = min(plan.block_k, group_size & -group_size)
    return dataclasses.replace(plan, block_k=block_k) if block_k != plan.block_k else plan


def candidates(rows: int, group_size: int) -> list[Plan]:
    """The plans for `rows` rows (`INT4_CANDIDATES`), fitted to the group size, without repeats; mma plans only
    for groups of whole K steps."""
    bucket = min(gemv.row_bucket(rows), _LARGEST_BUCKET)
    plans = [p for p in INT4_CANDIDATES[bucket] if p.path != "mma" or group_size % MMA_K_STEP == 0]
    return list(dict.fromkeys(fit(plan, group_size) for plan in plans))


@triton.jit
def _dequantize_kernel(
    w_ptr, scale_ptr, zero_ptr, out_ptr, N, K, stride_wn, stride_scale,
    HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # (q - z) * s in fp32, rounded to the output dtype: the reference's dequantized weight.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.program_id(1) * BLOCK_K
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    w_ptrs = w_ptr + rows[:, None] * stride_wn + (k // 8 + tl.arange(0, BLOCK_K // 8))[None, :]
    w, scale, zero = w_tile(
        w_ptrs, k, K, rows, scale_ptr, zero_ptr, stride_scale, True, "evict_first", BLOCK_K, True, HAS_ZEROS, GROUP_SIZE
    )
    offs_k = k + tl.arange(0, BLOCK_K)
    out = (int4_codes(w, zero) * scale[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * K + offs_k[None, :], out, mask=(offs_n < N)[:, None] & (offs_k < K)[None, :])


INTERPRETED: bool = is_interpreted(_dequantize_kernel)


def dequantize(words: Tensor, int4: Int4Weights, dtype: torch.dtype) -> Tensor:
    """The weight [N, K] in `dtype` from its int32 words [N, K / 8] (what the reference multiplies by)."""
    n, k = words.shape[0], words.shape[1] * 8
    out = torch.empty((n, k), dtype=dtype, device=words.device)
    block_n, block_k = 32, min(128, int4.group_size & -int4.group_size)
    zeros = int4.zeros if int4.zeros is not None else int4.scales  # unread without HAS_ZEROS
    _dequantize_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        words, int4.scales, zeros, out, n, k, words.stride(0), int4.scales.stride(0),
        HAS_ZEROS=int4.zeros is not None, GROUP_SIZE=int4.group_size, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out


# The hfma path's fp16 operands: x times HFMA_X_SCALE, codes minus zero points times HFMA_W_SCALE (exact), so
# a word's sum of eight products stays within 0.06 * max|x| and x itself within fp16 up to |x| = 2^20.
HFMA_X_SCALE: tl.constexpr = tl.constexpr(2.0**-4)
HFMA_W_SCALE: tl.constexpr = tl.constexpr(2.0**-6)
# fp16 accumulators take at most this many K tiles (more K splits where there are more), which keeps them below
# fp16's 65504 for |x| < 2^16 and group scales up to 1/2 (weights within +-7.5), and their rounding (2^-11 of
# each partial sum) to a few fp16 ulps of the output (tests/kernels/test_gemv_int4_kernels.py), half a bf16 ulp.
HFMA_MAX_TILES = 16


@triton.jit
def _f16x2(lo, hi):
    """fp32 values -> int32 words of two fp16 values, lo in the low half (as `cvt.rn.f16x2.f32 d, hi, lo`)."""
    lo_bits = lo.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return lo_bits | (hi.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32) << 16)


@triton.jit
def _halves(words):
    """int32 words of two fp16 values -> (low, high) in fp32."""
    lo = (words & 0xFFFF).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, (words >> 16).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _half_values(words, X_BF16: tl.constexpr):
    """int32 words of two bf16 / fp16 values -> (low, high) in fp32."""
    if X_BF16:
        lo, hi = (words << 16).to(tl.float32, bitcast=True), (words & -65536).to(tl.float32, bitcast=True)
    else:
        lo, hi = _halves(words)
    return lo, hi


@triton.jit
def _load_nc(ptrs, ASM: tl.constexpr):
    """tl.load of read-only data, but in the layout `ptrs` has: an inline-asm load is not re-laid out for
    coalescing (as tl.load is), so its values need no shared-memory round trip to reach the threads that use
    them; those reading one address share an L1 line."""
    if ASM:
        if ptrs.dtype.element_ty.primitive_bitwidth == 16:
            raw = tl.inline_asm_elementwise(
                "ld.global.nc.b16 $0, [$1];", "=h,l", [ptrs.to(tl.int64)], tl.int16, is_pure=True, pack=1
            )
        else:
            raw = tl.inline_asm_elementwise(
                "ld.global.nc.b32 $0, [$1];", "=r,l", [ptrs.to(tl.int64)], tl.int32, is_pure=True, pack=1
            )
        values = raw.to(ptrs.dtype.element_ty, bitcast=True)
    else:
        values = tl.load(ptrs)
    return values


@triton.jit
def _x_pairs(w0, w1, w2, w3, X_BF16: tl.constexpr, ASM: tl.constexpr):
    """Four int32 words of x (each two bf16 / fp16 values, x_2i low: the eight values a weight word meets) -> the
    four fp16x2 words `_hfma_words` multiplies the weight word by: (x0, x4), (x1, x5), (x2, x6), (x3, x7), times
    HFMA_X_SCALE."""
    if not ASM:  # Triton's interpreter runs no PTX: the same values from Triton's ops
        lo0, hi0 = _half_values(w0, X_BF16)
        lo1, hi1 = _half_values(w1, X_BF16)
        lo2, hi2 = _half_values(w2, X_BF16)
        lo3, hi3 = _half_values(w3, X_BF16)
        a = _f16x2(lo0 * HFMA_X_SCALE, lo2 * HFMA_X_SCALE)
        b = _f16x2(hi0 * HFMA_X_SCALE, hi2 * HFMA_X_SCALE)
        c = _f16x2(lo1 * HFMA_X_SCALE, lo3 * HFMA_X_SCALE)
        d = _f16x2(hi1 * HFMA_X_SCALE, hi3 * HFMA_X_SCALE)
    elif X_BF16:  # bf16 -> fp32 is a shift or a mask, then two values to fp16 a cvt
        a, b, c, d = tl.inline_asm_elementwise(
            """{
            .reg .b32 v<8>;
            shl.b32 v0, $4, 16;
            and.b32 v1, $4, 0xFFFF0000;
            shl.b32 v2, $5, 16;
            and.b32 v3, $5, 0xFFFF0000;
            shl.b32 v4, $6, 16;
            and.b32 v5, $6, 0xFFFF0000;
            shl.b32 v6, $7, 16;
            and.b32 v7, $7, 0xFFFF0000;
            mul.f32 v0, v0, 0f3D800000;
            mul.f32 v1, v1, 0f3D800000;
            mul.f32 v2, v2, 0f3D800000;
            mul.f32 v3, v3, 0f3D800000;
            mul.f32 v4, v4, 0f3D800000;
            mul.f32 v5, v5, 0f3D800000;
            mul.f32 v6, v6, 0f3D800000;
            mul.f32 v7, v7, 0f3D800000;
            cvt.rn.f16x2.f32 $0, v4, v0;
            cvt.rn.f16x2.f32 $1, v5, v1;
            cvt.rn.f16x2.f32 $2, v6, v2;
            cvt.rn.f16x2.f32 $3, v7, v3;
            }""",
            "=r,=r,=r,=r,r,r,r,r", [w0, w1, w2, w3], (tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1,
        )  # fmt: skip
    else:  # fp16: scaled in pairs, then the halves regrouped
        a, b, c, d = tl.inline_asm_elementwise(
            """{
            .reg .b32 v<4>, scale;
            mov.b32 scale, 0x2C002C00;
            mul.rn.f16x2 v0, $4, scale;
            mul.rn.f16x2 v1, $5, scale;
            mul.rn.f16x2 v2, $6, scale;
            mul.rn.f16x2 v3, $7, scale;
            prmt.b32 $0, v0, v2, 0x5410;
            prmt.b32 $1, v0, v2, 0x7632;
            prmt.b32 $2, v1, v3, 0x5410;
            prmt.b32 $3, v1, v3, 0x7632;
            }""",
            "=r,=r,=r,=r,r,r,r,r", [w0, w1, w2, w3], (tl.int32, tl.int32, tl.int32, tl.int32), is_pure=True, pack=1,
        )  # fmt: skip
    return a, b, c, d


@triton.jit
def _group_constants(scale, zero, ASM: tl.constexpr):
    """A group's [R] scales and zero points -> the fp16x2 words `_hfma_words` takes: (s, s), and the addends that
    turn the magic-number codes into (code - zero) * HFMA_W_SCALE: -(1024 + z) / 64 and -(64 + z) / 64, whose
    fp16 bits are 0xCC00 + z and 0xBC00 + 16 z."""
    if ASM:
        s2 = tl.inline_asm_elementwise(
            "cvt.rn.f16x2.f32 $0, $1, $1;", "=r,r", [scale.to(tl.float32)], tl.int32, is_pure=True, pack=1
        )
    else:
        s2 = _f16x2(scale.to(tl.float32), scale.to(tl.float32))
    z = zero.to(tl.int32)
    return s2, (z + 0xCC00) * 0x10001, (z * 16 + 0xBC00) * 0x10001


@triton.jit
def _hfma_words(acc, w, xa, xb, xc, xd, s2, low_addend, high_addend, ASM: tl.constexpr):
    """acc + s * (the eight products of each weight word with its x values), in fp16x2 words [R, C].

    Each LOP3 ORs two codes, one from each 16-bit half of the word (or of the word shifted right by 8), into the
    mantissas of fp16 1024 (0x6400): the fp16 values 1024 + code (low nibbles) and 1024 + 16 * code (high
    nibbles), with no int -> float conversion. One FMA each makes (code - zero) / 64, exactly; four more sum the
    products with the x pairs of `_x_pairs` (codes 0-3 in the low halves, 4-7 in the high ones) and one adds
    them, scaled, to the accumulator: 14 instructions per eight weights."""
    if ASM:
        acc = tl.inline_asm_elementwise(
            """{
            .reg .b32 t1, w0, w1, w2, w3, p, low_scale, high_scale;
            mov.b32 low_scale, 0x24002400;
            mov.b32 high_scale, 0x14001400;
            shr.u32 t1, $1, 8;
            lop3.b32 w0, $1, 0x000F000F, 0x64006400, 0xEA;
            lop3.b32 w1, $1, 0x00F000F0, 0x64006400, 0xEA;
            lop3.b32 w2, t1, 0x000F000F, 0x64006400, 0xEA;
            lop3.b32 w3, t1, 0x00F000F0, 0x64006400, 0xEA;
            fma.rn.f16x2 w0, w0, low_scale, $7;
            fma.rn.f16x2 w1, w1, high_scale, $8;
            fma.rn.f16x2 w2, w2, low_scale, $7;
            fma.rn.f16x2 w3, w3, high_scale, $8;
            mul.rn.f16x2 p, w0, $2;
            fma.rn.f16x2 p, w1, $3, p;
            fma.rn.f16x2 p, w2, $4, p;
            fma.rn.f16x2 p, w3, $5, p;
            fma.rn.f16x2 $0, p, $6, $9;
            }""",
            "=r,r,r,r,r,r,r,r,r,r", [w, xa, xb, xc, xd, s2, low_addend, high_addend, acc], tl.int32,
            is_pure=True, pack=1,
        )  # fmt: skip
    else:  # Triton's interpreter runs no PTX: the same steps, each rounded to fp16 as the GPU rounds it
        zero = ((low_addend & 0xFFFF) - 0xCC00).to(tl.float32)
        sums = []
        for half in tl.static_range(2):
            x = _halves(xa)[half], _halves(xb)[half], _halves(xc)[half], _halves(xd)[half]
            p = 0.0
            for j in tl.static_range(4):
                code = ((w >> (4 * j + 16 * half)) & 0xF).to(tl.float32)
                p = (p + (code - zero) * HFMA_W_SCALE * x[j]).to(tl.float16).to(tl.float32)
            sums.append((p * _halves(s2)[0] + _halves(acc)[half]).to(tl.float16).to(tl.float32))
        acc = _f16x2(sums[0], sums[1])
    return acc


@triton.jit
def _hfma_tile(
    w_ptrs, x_ptrs, k, k_hi, rows_w, scale_ptr, zero_ptr, stride_scale,
    MASKED: tl.constexpr, SUB_EVEN_K: tl.constexpr, BLOCK_K: tl.constexpr, SUB_K: tl.constexpr,
    HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, X_BF16: tl.constexpr, ASM: tl.constexpr,
):  # fmt: skip
    """The W words at K offset k ([R, S, W]: S sub-tiles of SUB_K, each in one group; streamed once), their
    groups' constants ([R, S, 1] each, `_group_constants`) and x's pairs ([1, S, W] each, `_x_pairs`); with
    MASKED, zeros from k_hi on."""
    SUBTILES: tl.constexpr = BLOCK_K // SUB_K
    SUB_WORDS: tl.constexpr = SUB_K // 8
    sub = tl.arange(0, SUBTILES)
    if MASKED and SUB_EVEN_K:  # K ends at a sub-tile's end: one mask for its words, so 16-byte loads stay
        ok = (sub < (k_hi - k) // SUB_K)[:, None]
    else:
        ok = (sub[:, None] * SUB_WORDS + tl.arange(0, SUB_WORDS)[None, :]) < (k_hi - k) // 8
    w = gemv._load_k(w_ptrs, ok[None, :, :], MASKED, "evict_first")
    x_ptrs = x_ptrs[:, :, None] + tl.arange(0, 4)[None, None, :]  # the four x words of each weight word
    x_words = gemv._load_k(x_ptrs, ok[:, :, None], MASKED, "")
    # (x0, x2) and (x1, x3) of each four, then each alone
    even, odd = tl.split(tl.reshape(x_words, (x_words.shape[0], x_words.shape[1], 2, 2)))
    x0, x2 = tl.split(even)
    x1, x3 = tl.split(odd)
    # clamped: sub-tiles from k_hi on (masked, and the prefetching loop's tile at k_hi) read a valid group
    group = rows_w[:, None] * stride_scale + tl.minimum(k + sub * SUB_K, k_hi - 1)[None, :] // GROUP_SIZE
    if HAS_ZEROS:
        zero = _load_nc(zero_ptr + group[:, :, None], ASM)
    else:
        zero = tl.full([group.shape[0], group.shape[1], 1], 8, tl.int32)
    s2, low_addend, high_addend = _group_constants(_load_nc(scale_ptr + group[:, :, None], ASM), zero, ASM)
    xa, xb, xc, xd = _x_pairs(x0, x1, x2, x3, X_BF16, ASM)
    return w, s2, low_addend, high_addend, xa[None, :, :], xb[None, :, :], xc[None, :, :], xd[None, :, :]


@triton.jit
def _int4_hfma_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, counts_ptr, N, K, stride_wn, k_per_split, scale_ptr, zero_ptr, stride_scale,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, SUB_EVEN_K: tl.constexpr,
    PREFETCH: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SUB_K: tl.constexpr, HAS_ZEROS: tl.constexpr,
    GROUP_SIZE: tl.constexpr, X_BF16: tl.constexpr, ASM: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    # One row: x_ptr its [K / 2] int32 words, w_ptr the [N, K / 8] weight words. A tile is BLOCK_N rows of
    # BLOCK_K: SUB_K sub-tiles side by side, so a row's loads are BLOCK_K / 2 contiguous bytes however small
    # the groups. One fp16x2 accumulator per weight word a thread holds, summed in fp32 once at the end (at
    # most HFMA_MAX_TILES tiles a split).
    SUBTILES: tl.constexpr = BLOCK_K // SUB_K
    SUB_WORDS: tl.constexpr = SUB_K // 8
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_w = tl.minimum(offs_n, N - 1).to(tl.int64)  # rows past N re-read row N - 1, never stored
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    word_lo = gemv._first_w_col_then_wait(w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K, BLOCK_K // 8, PDL)
    words = word_lo + tl.arange(0, SUBTILES)[:, None] * SUB_WORDS + tl.arange(0, SUB_WORDS)[None, :]
    w_ptrs = w_ptr + rows_w[:, None, None] * stride_wn + words[None, :, :]
    x_ptrs = x_ptr + words * 4  # the four x words of each weight word
    acc = tl.zeros([BLOCK_N, SUBTILES, SUB_WORDS], dtype=tl.int32)  # fp16 zeros
    q = (rows_w, scale_ptr, zero_ptr, stride_scale)
    if PREFETCH:  # register double-buffering: the next tile's loads are in flight during this tile's math
        tile = _hfma_tile(
            w_ptrs, x_ptrs, k_lo, k_hi, *q, not EVEN_K, SUB_EVEN_K, BLOCK_K, SUB_K, HAS_ZEROS, GROUP_SIZE, X_BF16, ASM
        )  # fmt: skip
        for k in range(k_lo, k_hi, BLOCK_K):
            w, s2, low_addend, high_addend, xa, xb, xc, xd = tile
            w_ptrs += BLOCK_K // 8
            x_ptrs += BLOCK_K // 2
            tile = _hfma_tile(
                w_ptrs, x_ptrs, k + BLOCK_K, k_hi, *q, True, SUB_EVEN_K, BLOCK_K, SUB_K, HAS_ZEROS, GROUP_SIZE, X_BF16,
                ASM,
            )  # fmt: skip
            acc = _hfma_words(acc, w, xa, xb, xc, xd, s2, low_addend, high_addend, ASM)
    else:
        for k in range(k_lo, k_hi, BLOCK_K):
            w, s2, low_addend, high_addend, xa, xb, xc, xd = _hfma_tile(
                w_ptrs, x_ptrs, k, k_hi, *q, not EVEN_K, SUB_EVEN_K, BLOCK_K, SUB_K, HAS_ZEROS, GROUP_SIZE, X_BF16, ASM
            )  # fmt: skip
            acc = _hfma_words(acc, w, xa, xb, xc, xd, s2, low_addend, high_addend, ASM)
            w_ptrs += BLOCK_K // 8
            x_ptrs += BLOCK_K // 2
    low, high = _halves(acc)
    out = tl.sum(tl.sum(low + high, axis=2), axis=1) * (1.0 / (HFMA_X_SCALE * HFMA_W_SCALE))
    gemv._write(out[None, :], tl.arange(0, 1), offs_n, 1, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if SPLIT:
        gemv._reduce_if_last(tl.arange(0, 1), offs_n, 1, N, b_ptr, y_ptr, ws_ptr, counts_ptr, HAS_BIAS)


def _launch_hfma(x2: Tensor, words: Tensor, int4: Int4Weights, bias: Tensor | None, y2: Tensor, plan: Plan) -> None:
    (m, k), n = x2.shape, words.shape[0]
    if m != 1:
        raise ValueError(f"the hfma path takes one row, got {m}: use a dot plan (INT4_CANDIDATES)")
    sub_k = min(plan.block_k, int4.group_size & -int4.group_size)  # a sub-tile lies in one group
    if plan.block_k % sub_k:
        raise ValueError(f"{plan}: BLOCK_K must be a multiple of {sub_k} (group size {int4.group_size})")
    x_row = x2[0] if x2.storage_offset() % 2 == 0 else x2[0].clone()  # int32 words must be 4-byte aligned
    k_per_split, splits = gemv.split_k(k, plan, HFMA_MAX_TILES)
    zeros = int4.zeros if int4.zeros is not None else int4.scales  # unread without HAS_ZEROS
    programs = triton.cdiv(n, plan.block_n)
    ws, counts = gemv.split_k_buffers(y2, splits, programs)
    _int4_hfma_kernel[(programs, splits)](
        x_row.view(torch.int32), words, bias if bias is not None else y2, y2, ws, counts, n, k, words.stride(0),
        k_per_split, int4.scales, zeros, int4.scales.stride(0), HAS_BIAS=bias is not None, SPLIT=splits > 1,
        EVEN_K=k % plan.block_k == 0, SUB_EVEN_K=k % sub_k == 0, PREFETCH=plan.num_stages > 1,
        BLOCK_N=plan.block_n, BLOCK_K=plan.block_k,
        SUB_K=sub_k, HAS_ZEROS=int4.zeros is not None, GROUP_SIZE=int4.group_size,
        X_BF16=x2.dtype == torch.bfloat16, ASM=not INTERPRETED, num_warps=plan.num_warps, **pdl.launch_args(x2.device),
    )  # fmt: skip


_MMA_SOURCE = Path(__file__).with_name("int4_gemv_mma.cu")
_SCALE_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}  # int4_gemv_mma.cu's load_value


def mma_kernel_name(
    x_dtype: torch.dtype,
    scale_dtype: torch.dtype,
    has_zeros: bool,
    has_bias: bool,
    group_size: int,
    plan: Plan,
    pdl_on: bool,
    activation: str | None = None,
) -> str:
    """The instance of int4_gemv_mma.cu's kernel template that runs `plan` for these operands (with `activation`:
    gated, `int4_gated_linear`)."""
    activation_id = -1 if activation is None else ACTIVATION_IDS[activation]
    flags = [x_dtype == torch.float16, _SCALE_KINDS[scale_dtype], has_zeros, has_bias, activation_id]
    tile = [group_size // MMA_K_STEP, plan.block_n // 16, plan.block_k // MMA_K_STEP, plan.num_warps]
    tile += [plan.num_stages > 1, pdl_on]
    return "int4_mma_gemv<" + ", ".join(str(v).lower() for v in flags + tile) + ">"


def _mma_unsupported(x2: Tensor, words: Tensor, int4: Int4Weights) -> str | None:
    """Why the mma path cannot run this GEMM (None: it can)."""
    (m, k), scales, zeros = x2.shape, int4.scales, int4.zeros
    if m != 1:
        return f"the mma path takes one row, got {m}: use a dot plan (INT4_CANDIDATES)"
    if INTERPRETED:
        return "the mma path is CUDA C++, which Triton's interpreter cannot run: use an hfma plan"
    if k % MMA_K_STEP or int4.group_size % MMA_K_STEP:
        return f"the mma path takes K and groups of whole {MMA_K_STEP}s, got {k} and {int4.group_size}"
    if scales.dtype not in _SCALE_KINDS or (zeros is not None and zeros.dtype != scales.dtype):
        return f"the mma path takes scales and zero points of one float dtype, got {scales.dtype}"
    if words.stride(0) % 4 or words.data_ptr() % 16:
        return "the mma path reads weight rows 16 bytes at a time: rows must start 16-byte aligned"
    return None


def _launch_mma(
    x2: Tensor,
    words: Tensor,
    int4: Int4Weights,
    bias: Tensor | None,
    y2: Tensor,
    plan: Plan,
    activation: str | None = None,
) -> None:
    unsupported = _mma_unsupported(x2, words, int4)
    if unsupported:
        raise ValueError(unsupported)
    n = words.shape[0] if activation is None else words.shape[0] // 2  # gated: the outputs of [gate; up]
    outputs_per_block = plan.block_n if activation is None else plan.block_n // 2
    if activation is not None and plan.block_n % 32:
        raise ValueError(f"{plan}: a gated plan takes an even number of 16-row blocks (GATED_CANDIDATES)")
    x_row = x2[0] if x2.data_ptr() % 16 == 0 else x2[0].clone()  # read 16 bytes at a time
    pdl_on = pdl.enabled(x2.device)
    scales, zeros = int4.scales, int4.zeros
    name = mma_kernel_name(
        x2.dtype, scales.dtype, zeros is not None, bias is not None, int4.group_size, plan, pdl_on, activation
    )
    args = [x_row, words, scales, zeros if zeros is not None else scales, bias if bias is not None else y2, y2]
    args += [n, x2.shape[1], words.stride(0) // 4, scales.stride(0)]
    compiled = nvrtc.kernel(_MMA_SOURCE, name, x2.device)
    nvrtc.launch(compiled, (triton.cdiv(n, outputs_per_block),), 32 * plan.num_warps, args, x2.device, pdl_on)


def _run(x2: Tensor, words: Tensor, int4: Int4Weights, bias: Tensor | None, y2: Tensor, plan: Plan) -> None:
    if plan.path == "cublas":  # DEQUANTIZE_CUBLAS
        gemv._launch(x2, dequantize(words, int4, x2.dtype), bias, y2, CUBLAS)
    elif plan.path == "hfma":
        _launch_hfma(x2, words, int4, bias, y2, plan)
    elif plan.path == "mma":
        _launch_mma(x2, words, int4, bias, y2, plan)
    else:
        gemv._launch(x2, words, bias, y2, plan, int4)


def int4_linear(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None = None,
    plan: Plan | None = None,
) -> Tensor:
    """`ops.quant.int4_linear` on the GPU (`supports` must hold): x [..., K] @ dequantized weight^T + bias, in
    x's dtype. The plan is tuned per (M bucket, N, K, dtype, group size, zero points, device) on first use
    (kernels/tuning.py); `plan` forces one (fitted to the group size)."""
    x2, y, y2 = gemv._rows_and_output(x, weight)
    words = weight.view(torch.int32)
    int4 = Int4Weights(scales.contiguous(), zeros.contiguous() if zeros is not None else None, group_size)
    run = lambda plan: _run(x2, words, int4, bias, y2, plan)
    if plan is None:
        key = (gemv.row_bucket(x2.shape[0]), words.shape[0], x2.shape[1], x2.dtype, "int4", group_size)
        plan = tuning.cached_plan(key + (zeros is not None, x2.device), candidates(x2.shape[0], group_size), run)
    run(fit(plan, group_size))
    return y


def supports_gated(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None,
    activation: str,
) -> bool:
    """Whether `int4_gated_linear` takes these operands: `supports` holds, at one row, and the mma path runs it
    (`_mma_unsupported`); an even N ([gate; up]) and a known activation."""
    if not supports(x, weight, scales, zeros, group_size, bias) or x.numel() != x.shape[-1]:
        return False
    if weight.shape[0] % 2 or activation not in ACTIVATION_IDS:
        return False
    int4 = Int4Weights(scales, zeros, group_size)
    return _mma_unsupported(x.reshape(1, -1), weight.view(torch.int32), int4) is None


def int4_gated_linear(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None,
    activation: str,
    plan: Plan | None = None,
) -> Tensor:
    """`ops.quant.int4_gated_linear` at one row on the GPU (`supports_gated` must hold): act(gate) * up of the
    GEMM's halves [gate; up], in one mma kernel. The plan is tuned per shape on first use (GATED_CANDIDATES);
    `plan` forces one."""
    n, k = weight.shape[0] // 2, x.shape[-1]
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    x2, y2, words = rows_view(x), y.view(1, n), weight.view(torch.int32)
    int4 = Int4Weights(scales.contiguous(), zeros.contiguous() if zeros is not None else None, group_size)
    run = lambda plan: _launch_mma(x2, words, int4, bias, y2, plan, activation)
    if plan is None:
        key = (1, 2 * n, k, x.dtype, "int4_gated", activation, group_size, zeros is not None, x.device)
        plan = tuning.cached_plan(key, GATED_CANDIDATES, run)
    run(plan)
    return y
