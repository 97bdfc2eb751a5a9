"""Skinny GEMMs for decode: y = x @ W^T (+ bias) with x [M <= 16, K] and a row-major half-precision W [N, K].

At M <= 16 a GEMM is a weight stream: every byte of W is read once and used M times, so the kernel is judged
by the bandwidth it reaches. Each program owns BLOCK_N rows of W (and, with split-K, one slice of K) and
walks K in BLOCK_K tiles of 16-byte loads, accumulating in fp32 (FP8 fma plans: in fp16 over at most
F16_MAC_MAX_TILES tiles, then fp32). Two inner products:

- `fma` (M <= 4): CUDA-core FMAs into one [BLOCK_N, BLOCK_K] fp32 accumulator per x row, reduced over K once
  at the end, optionally with the next tile's loads issued before this tile's math (register double-buffer).
- `dot` (any M): tensor cores on the swapped product W_tile @ x_tile^T ([BLOCK_N, BLOCK_K] x [BLOCK_K, 16]),
  x's rows padded to 16, with Triton's software pipelining of the W tiles through shared memory.

FP8 E4M3 weights with a static activation scale (`fp8_gemv`, the decode path of `trtllm::fp8_linear`): x is
quantized as it is loaded and the sums are scaled by x_scale * w_scale, so one kernel does what would otherwise
be a quantize kernel plus a cuBLASLt GEMM padded to 16 rows. On the fma path W and x's E4M3 values meet in fp16
on CUDA cores (packed FMAs; `F16_MAC_SCALE`): converted to fp32 instead, the conversions bounded the path at
~2.2 TB/s on an H100. On the dot path the FP8 tensor cores take the E4M3 tiles as they are.

INT4 weight-only weights (`Int4Weights`, used by kernels/int4_gemv.py): the W tiles are loaded as int32 words of
eight 4-bit codes and dequantized in registers (`int4_codes`); the dot path also takes more than 16 rows
(`Plan.block_m`), a GEMM that dequantizes each W tile into the tensor cores.

With split-K the programs write fp32 partials and the last of an output tile's splits to finish sums them (in
split order, so results are deterministic), adds the bias and casts: no second kernel. A plan (path, tile,
split, warps, stages) is timed per (M bucket, N, K, dtype) on first use (kernels/tuning.py), with cuBLAS as one
more candidate so a shape where it streams faster keeps it. Nothing here syncs the host once a plan is cached,
so calls are CUDA-graph capturable. On Hopper the kernels launch with PDL (kernels/pdl.py): each program asks
L2 for its first W tile while the kernel before it ends.

Above MAX_ROWS, up to BLAS_TUNED_ROWS (decode batches), `linear` times cuBLAS against cuBLASLt per 16 rows and
keeps the faster: their heuristics pick different tiles, and on an H100 a Llama-2-7B layer's GEMMs at
384 rows took 8.04 ms a step in cuBLAS against 7.65 in cuBLASLt (the down GEMM: 73.6 against 62.0 us). Each library
is also timed on x padded with BLAS_PAD_ROWS more rows (whose outputs are dropped): both fall off a cliff at some row
counts, and on an H100 the QKV GEMM of 416 rows took 84.9 us where 432 rows took 61.1 (docs/benchmarks.md run 91).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, pdl, plans_fixed, rows_view
from trtllm_compile.kernels.pdl import prefetch_l2, start_next_then_wait
from trtllm_compile.kernels.quantize import inverse_scale, to_e4m3
from trtllm_compile.kernels.tuning import cached_plan

MAX_ROWS = 16  # above this a GEMM has enough rows to be compute-bound: cuBLAS or cuBLASLt runs it
# Up to this many rows (decode batches) the BLAS library is timed per BLAS_ROW_STEP rows (the decode graphs' step:
# a prefill's odd row counts share their step's plan); prefill chunks above it take cuBLAS
BLAS_TUNED_ROWS = 1024
BLAS_ROW_STEP = 16
# Hopper's FP8 MMA accumulates in fewer bits than fp32; the dot path adds its sums into fp32 every this many
# products (as cuBLASLt does unless fast accumulation is on)
FP8_PROMOTE_EVERY: tl.constexpr = tl.constexpr(128)
# The fma path multiplies FP8 weights in fp16 (`_fma_tile`): x's E4M3 values times 2^-6 keep a product (|w|, |x| <=
# 448) within 3136, so an accumulator of up to F16_MAC_MAX_TILES of them stays below fp16's 65504.
F16_MAC_SCALE: tl.constexpr = tl.constexpr(2.0**-6)
F16_MAC_MAX_TILES = 16
HALF_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _store_y(out, offs_m, offs_n, M, N, b_ptr, y_ptr, HAS_BIAS: tl.constexpr):
    """y [M, N] = the fp32 [BLOCK_M, BLOCK_N] sums + bias, cast to y's dtype."""
    if HAS_BIAS:
        out += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    tl.store(y_ptr + offs_m[:, None] * N + offs_n[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _write(out, offs_m, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """Store the fp32 [BLOCK_M, BLOCK_N] result: with SPLIT this program's split-K partial (`_reduce_if_last`
    sums them), else into y (`_store_y`)."""
    if SPLIT:
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        tl.store(ws_ptr + tl.program_id(1) * M * N + offs_m[:, None] * N + offs_n[None, :], out, mask=mask)
    else:
        _store_y(out, offs_m, offs_n, M, N, b_ptr, y_ptr, HAS_BIAS)


@triton.jit
def _reduce_if_last(offs_m, offs_n, M, N, b_ptr, y_ptr, ws_ptr, counts_ptr, HAS_BIAS: tl.constexpr):
    """Once this program's partials are stored (`_write`): the last of the output tile's K splits to get here sums
    the tile's partials in split order (so the result does not depend on which finished last) into y, and
    re-arms the tile's count (`split_counts`) for the next launch. This saves a second kernel per GEMV."""
    tl.debug_barrier()  # every thread's partial is stored before the count is taken (released with it)
    arrived = tl.atomic_add(counts_ptr + tl.program_id(0), 1, sem="acq_rel", scope="gpu")
    if arrived == tl.num_programs(1) - 1:  # the other splits' partials are visible (acquired)
        mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        partials = ws_ptr + offs_m[:, None] * N + offs_n[None, :]
        out = tl.zeros([offs_m.shape[0], offs_n.shape[0]], dtype=tl.float32)
        for s in range(tl.num_programs(1)):  # from L2: another SM wrote them
            out += tl.load(partials + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
        _store_y(out, offs_m, offs_n, M, N, b_ptr, y_ptr, HAS_BIAS)
        tl.atomic_xchg(counts_ptr + tl.program_id(0), 0)


@triton.jit
def _load_k(ptrs, k_ok, MASKED: tl.constexpr, EVICT: tl.constexpr):
    """A W tile ([BLOCK_N, BLOCK_K] values, or INT4 words) or an x row ([BLOCK_K]) as stored, zeros where not
    k_ok (a K mask, or for tiles of other ranks a mask that broadcasts to them); EVICT is "evict_first" for what
    is streamed once, else ""."""
    if MASKED:
        if len(ptrs.shape) == 2:
            k_ok = k_ok[None, :]
        return tl.load(ptrs, mask=k_ok, other=0.0, eviction_policy=EVICT)
    return tl.load(ptrs, eviction_policy=EVICT)


@triton.jit
def int4_codes(words, zero):
    """[R, W] int32 words of eight 4-bit codes (code j in bits 4j..4j+3: `ops.quant.pack_int4`'s bytes read as
    little-endian int32) -> [R, 8W] fp32 code - zero in K order, exact; `zero` is [R, 1] or a scalar.

    Three interleaves repeat each word eight times in the thread that loaded it, and each copy is shifted to
    its code. The code becomes a float without an int -> float conversion (a quarter-rate instruction): OR-ed
    into the mantissa of 2^23 (0x4B000000) it is the float 2^23 + code, and one subtraction of 2^23 + zero
    leaves code - zero (exact, zero points being integers): a shift, a LOP3 and an FADD per weight."""
    words = tl.interleave(words, words)
    words = tl.interleave(words, words)
    words = tl.interleave(words, words)
    shifts = (tl.arange(0, words.shape[1]) % 8) * 4
    magic = ((words >> shifts[None, :]) & 0xF) | 0x4B000000
    return magic.to(tl.float32, bitcast=True) - (8388608.0 + zero)


@triton.jit
def w_tile(
    w_ptrs, k, k_hi, rows_w, w_scale_ptr, w_zero_ptr, stride_w_scale,
    MASKED: tl.constexpr, EVICT: tl.constexpr, BLOCK_K: tl.constexpr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr,
):  # fmt: skip
    """The W tile at K offset k as stored ([BLOCK_N, BLOCK_K], or with INT4 [BLOCK_N, BLOCK_K / 8] words) with
    its INT4 group's scales [BLOCK_N] and zero points [BLOCK_N, 1] (a tile lies in one group); with MASKED,
    what lies from k_hi on is not read. Without INT4 the scale is 1.0 and the zero point unused."""
    if INT4:
        w = _load_k(w_ptrs, (k // 8 + tl.arange(0, BLOCK_K // 8)) < k_hi // 8, MASKED, EVICT)
        # Clamped: the fma path's prefetch asks for the tile at k_hi, past the last group of the last row.
        group = rows_w * stride_w_scale + tl.minimum(k, k_hi - 1) // GROUP_SIZE
        zero = 8.0  # the symmetric zero point
        if HAS_ZEROS:
            zero = tl.load(w_zero_ptr + group).to(tl.float32)[:, None]
        scale = tl.load(w_scale_ptr + group).to(tl.float32)
    else:
        w = _load_k(w_ptrs, (k + tl.arange(0, BLOCK_K)) < k_hi, MASKED, EVICT)
        scale, zero = 1.0, 0.0
    return w, scale, zero


@triton.jit
def _w_values(w, zero, INT4: tl.constexpr):
    """A tile of `_fma_tile` in fp32: with INT4 its codes minus zero points (`int4_codes`)."""
    if INT4:
        w = int4_codes(w, zero)
    return w


@triton.jit
def _first_w_col_then_wait(
    w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K: tl.constexpr, W_COLS: tl.constexpr, PDL: tl.constexpr
):  # fmt: skip
    """The W column (in values as stored, W_COLS a tile row) where this program's K slice starts at k_lo. With PDL
    (kernels/pdl.py), first ask L2 for its first tile of each row (cut at k_hi) while the previous kernel ends,
    then wait for it."""
    col_lo = tl.multiple_of(k_lo // (BLOCK_K // W_COLS), W_COLS)  # k_lo: whole tiles, so 16-byte loads
    if PDL:
        W_BYTES: tl.constexpr = w_ptr.dtype.element_ty.primitive_bitwidth // 8
        cols_left = (k_hi - k_lo) // (BLOCK_K // W_COLS)
        prefetch_l2(w_ptr + rows_w * stride_wn + col_lo, cols_left * W_BYTES, W_COLS * W_BYTES)
    start_next_then_wait(PDL)
    return col_lo


@triton.jit
def _first_w_tile_ptrs(
    w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K: tl.constexpr, W_COLS: tl.constexpr, PDL: tl.constexpr
):  # fmt: skip
    """Pointers to this program's W tile at K offset k_lo ([BLOCK_N, W_COLS] values as stored), after
    `_first_w_col_then_wait`."""
    col_lo = _first_w_col_then_wait(w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K, W_COLS, PDL)
    return w_ptr + rows_w[:, None] * stride_wn + (col_lo + tl.arange(0, W_COLS))[None, :]


@triton.jit
def _fp8_round(x, inv_scale, FP8_X: tl.constexpr, F16_MAC: tl.constexpr):
    """With FP8_X, x as the FP8 GEMM sees it (`ops.quant.fp8_quantize`: x times 1 / scale, saturated to +-448,
    rounded to E4M3), in fp32, or with F16_MAC times F16_MAC_SCALE in fp16 (exact); else x."""
    if F16_MAC:
        x = (to_e4m3(x, inv_scale).to(tl.float32) * F16_MAC_SCALE).to(tl.float16)
    elif FP8_X:
        x = to_e4m3(x, inv_scale).to(tl.float32)
    return x


@triton.jit
def _fma_tile(
    w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k, k_hi, x_inv_scale,
    rows_w, w_scale_ptr, w_zero_ptr, stride_w_scale,
    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, F16_MAC: tl.constexpr,
):  # fmt: skip
    """The W tile at K offset k with its INT4 scales and zero points (`w_tile`), and up to four x rows over it, in
    fp32 but for INT4 words (converted where used, `_w_values`: 8x the registers); with MASKED, zeros from k_hi
    on. FP8 and half tiles convert from the registers they are loaded in (carried as bytes, FP8 tiles cost a
    third more instructions to unpack). With F16_MAC (FP8 W and x) both are fp16: E4M3 -> fp16 is one
    instruction per two values, where fp32 takes a quarter-rate conversion per value more, which bounded this path
    at ~2.2 TB/s on an H100. x's scaled E4M3 values are exact in fp16 (`_fp8_round`), and so is a product of
    two unless it lies 2^28 or more below the largest (448 * 448), where fp16 turns subnormal."""
    w, scale, zero = w_tile(
        w_ptrs, k, k_hi, rows_w, w_scale_ptr, w_zero_ptr, stride_w_scale,
        MASKED, "evict_first", BLOCK_K, INT4, HAS_ZEROS, GROUP_SIZE,
    )  # fmt: skip
    if F16_MAC:
        w = w.to(tl.float16)
    elif not INT4:
        w = w.to(tl.float32)
    k_ok = (k + tl.arange(0, BLOCK_K)) < k_hi
    x0 = _fp8_round(_load_k(x0_ptrs, k_ok, MASKED, "").to(tl.float32), x_inv_scale, FP8_X, F16_MAC)
    x1, x2, x3 = x0, x0, x0
    if BLOCK_M > 1:
        x1 = _fp8_round(_load_k(x1_ptrs, k_ok, MASKED, "").to(tl.float32), x_inv_scale, FP8_X, F16_MAC)
    if BLOCK_M > 2:
        x2 = _fp8_round(_load_k(x2_ptrs, k_ok, MASKED, "").to(tl.float32), x_inv_scale, FP8_X, F16_MAC)
        x3 = _fp8_round(_load_k(x3_ptrs, k_ok, MASKED, "").to(tl.float32), x_inv_scale, FP8_X, F16_MAC)
    return w, scale, zero, x0, x1, x2, x3


@triton.jit
def _fma(acc, w, x, scale, INT4: tl.constexpr):
    """acc + w * x for a [BLOCK_N, BLOCK_K] W tile and an x row; with INT4 (w: codes minus zero points), one
    accumulator per word of eight codes, its products summed in the thread before the group scale multiplies
    them once: acc + scale * (sum over each word of w * x)."""
    if INT4:
        words = tl.sum(tl.reshape(w * x[None, :], (w.shape[0], w.shape[1] // 8, 8)), axis=2)
        return acc + words * scale[:, None]
    else:  # noqa: RET505
        return acc + w * x[None, :]


@triton.jit
def _scaled_sum(acc, x_scale, w_scale, SCALED: tl.constexpr):
    """One x row's [1, BLOCK_N] result from its [BLOCK_N, *] accumulator (scaled in the references' order), summed
    in fp32."""
    out = tl.sum(acc.to(tl.float32), axis=1)
    if SCALED:
        out = out * x_scale * w_scale
    return out[None, :]


@triton.jit
def _gemv_fma_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, counts_ptr, M, N, K, stride_xm, stride_wn, k_per_split,
    x_scale_ptr, w_scale_ptr, stride_w_scale, w_zero_ptr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, PDL: tl.constexpr,
    F16_MAC: tl.constexpr,
):  # fmt: skip
    # One [BLOCK_N, BLOCK_K] fp32 accumulator per x row (BLOCK_M <= 4), reduced over K once at the end. The x
    # rows are 1-D loads whose layout is the W tile's column slice when BLOCK_K = 256 * num_warps (8 elements
    # a thread, all warps along K): no shared-memory layout conversion in the loop. With FP8_X (an FP8 E4M3 W,
    # a static per-tensor x scale) x is quantized as it is loaded and the sums scaled by x_scale * w_scale[n].
    # With INT4 a tile row is BLOCK_K / 8 int32 words, and each x row keeps one accumulator per word.
    W_COLS: tl.constexpr = BLOCK_K // 8 if INT4 else BLOCK_K  # W values a tile row loads
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_w = tl.minimum(offs_n, N - 1).to(tl.int64)  # rows past N re-read row N - 1, never stored
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    w_ptrs = _first_w_tile_ptrs(w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K, W_COLS, PDL)
    x0_ptrs = x_ptr + k_lo + offs_k
    x1_ptrs = x0_ptrs + tl.minimum(1, M - 1) * stride_xm  # rows past M re-read row M - 1, never stored
    x2_ptrs = x0_ptrs + tl.minimum(2, M - 1) * stride_xm
    x3_ptrs = x0_ptrs + tl.minimum(3, M - 1) * stride_xm
    x_scale, x_inv_scale = 1.0, 1.0
    if FP8_X:
        x_scale = tl.load(x_scale_ptr)
        x_inv_scale = inverse_scale(x_scale_ptr)
        if F16_MAC:  # the sums are of x's values times F16_MAC_SCALE
            x_scale = x_scale * (1.0 / F16_MAC_SCALE)
    q = (rows_w, w_scale_ptr, w_zero_ptr, stride_w_scale)
    acc0 = tl.zeros([BLOCK_N, W_COLS], dtype=tl.float32)
    if F16_MAC:
        acc0 = acc0.to(tl.float16)
    acc1, acc2, acc3 = acc0, acc0, acc0
    if PREFETCH:  # register double-buffering: the next tile's loads are in flight during this tile's FMAs
        w, scale, zero, x0, x1, x2, x3 = _fma_tile(
            w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k_lo, k_hi, x_inv_scale, *q,
            True, BLOCK_M, BLOCK_K, FP8_X, INT4, HAS_ZEROS, GROUP_SIZE, F16_MAC,
        )  # fmt: skip
        for k in range(k_lo, k_hi, BLOCK_K):
            w_cur, s_cur, z_cur, a0, a1, a2, a3 = w, scale, zero, x0, x1, x2, x3
            w_ptrs += W_COLS
            x0_ptrs += BLOCK_K
            x1_ptrs += BLOCK_K
            x2_ptrs += BLOCK_K
            x3_ptrs += BLOCK_K
            w, scale, zero, x0, x1, x2, x3 = _fma_tile(
                w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k + BLOCK_K, k_hi, x_inv_scale, *q,
                True, BLOCK_M, BLOCK_K, FP8_X, INT4, HAS_ZEROS, GROUP_SIZE, F16_MAC,
            )  # fmt: skip
            w_cur = _w_values(w_cur, z_cur, INT4)
            acc0 = _fma(acc0, w_cur, a0, s_cur, INT4)
            if BLOCK_M > 1:
                acc1 = _fma(acc1, w_cur, a1, s_cur, INT4)
            if BLOCK_M > 2:
                acc2 = _fma(acc2, w_cur, a2, s_cur, INT4)
                acc3 = _fma(acc3, w_cur, a3, s_cur, INT4)
    else:
        for k in range(k_lo, k_hi, BLOCK_K):
            w, scale, zero, x0, x1, x2, x3 = _fma_tile(
                w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k, k_hi, x_inv_scale, *q,
                not EVEN_K, BLOCK_M, BLOCK_K, FP8_X, INT4, HAS_ZEROS, GROUP_SIZE, F16_MAC,
            )  # fmt: skip
            w = _w_values(w, zero, INT4)
            acc0 = _fma(acc0, w, x0, scale, INT4)
            if BLOCK_M > 1:
                acc1 = _fma(acc1, w, x1, scale, INT4)
            if BLOCK_M > 2:
                acc2 = _fma(acc2, w, x2, scale, INT4)
                acc3 = _fma(acc3, w, x3, scale, INT4)
            w_ptrs += W_COLS
            x0_ptrs += BLOCK_K
            x1_ptrs += BLOCK_K
            x2_ptrs += BLOCK_K
            x3_ptrs += BLOCK_K
    # Scaling is linear, so split-K partials are scaled before they are summed.
    w_scale = 1.0
    if FP8_X:
        w_scale = tl.load(w_scale_ptr + rows_w * stride_w_scale)  # stride 0: a per-tensor w scale
    row = tl.arange(0, 1)
    out0 = _scaled_sum(acc0, x_scale, w_scale, FP8_X)
    _write(out0, row, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if BLOCK_M > 1:
        out1 = _scaled_sum(acc1, x_scale, w_scale, FP8_X)
        _write(out1, row + 1, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if BLOCK_M > 2:
        out2 = _scaled_sum(acc2, x_scale, w_scale, FP8_X)
        _write(out2, row + 2, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
        out3 = _scaled_sum(acc3, x_scale, w_scale, FP8_X)
        _write(out3, row + 3, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if SPLIT:
        _reduce_if_last(tl.arange(0, BLOCK_M), offs_n, M, N, b_ptr, y_ptr, ws_ptr, counts_ptr, HAS_BIAS)


@triton.jit
def _mma(w, x, acc, UPCAST: tl.constexpr, FP8_X: tl.constexpr):
    """acc + w @ x on the tensor cores."""
    if UPCAST:  # Triton's interpreter multiplies bf16 dot operands as raw bits; fp32 products are exact
        acc = tl.dot(w.to(tl.float32), x.to(tl.float32), acc)
    elif FP8_X:
        acc = tl.dot(w, x, acc, max_num_imprecise_acc=FP8_PROMOTE_EVERY)
    else:
        acc = tl.dot(w, x, acc)
    return acc


@triton.jit
def _gemv_dot_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, counts_ptr, M, N, K, stride_xm, stride_wn, k_per_split,
    x_scale_ptr, w_scale_ptr, stride_w_scale, w_zero_ptr,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
    INT4: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, W_EVICT: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    # With FP8_X (an FP8 E4M3 W, a static per-tensor x scale) x^T tiles are quantized to E4M3 as they are loaded,
    # the FP8 tensor cores multiply them with the W tiles, and the sums are scaled by x_scale * w_scale[n]. With
    # INT4 the codes minus zero points (exact in x's dtype) meet x on the tensor cores and each tile's sums are
    # scaled by its group's scales; with more x rows than a tile has K (a GEMM) the weights are scaled instead.
    # Programs are numbered M block first, so those that read the same W tiles run together and find them in L2.
    W_COLS: tl.constexpr = BLOCK_K // 8 if INT4 else BLOCK_K  # W values a tile row loads
    m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m, pid_n, pid_k = tl.program_id(0) % m_blocks, tl.program_id(0) // m_blocks, tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_x = tl.minimum(offs_m, M - 1)
    rows_w = tl.minimum(offs_n, N - 1).to(tl.int64)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    w_ptrs = _first_w_tile_ptrs(w_ptr, rows_w, stride_wn, k_lo, k_hi, BLOCK_K, W_COLS, PDL)
    x_ptrs = x_ptr + rows_x[None, :] * stride_xm + (k_lo + offs_k)[:, None]  # x^T: [BLOCK_K, BLOCK_M]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    x_inv_scale = 1.0
    if FP8_X:
        x_inv_scale = inverse_scale(x_scale_ptr)
    for k in range(k_lo, k_hi, BLOCK_K):
        w, scale, zero = w_tile(
            w_ptrs, k, K, rows_w, w_scale_ptr, w_zero_ptr, stride_w_scale,
            not EVEN_K, W_EVICT, BLOCK_K, INT4, HAS_ZEROS, GROUP_SIZE,
        )  # fmt: skip
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=((k + offs_k) < K)[:, None], other=0.0)
        if FP8_X:
            x = to_e4m3(x, x_inv_scale)
        if INT4 and BLOCK_M < BLOCK_K:  # scaling the tile's [BLOCK_N, BLOCK_M] sums costs less than its weights
            acc += _mma(int4_codes(w, zero).to(x.dtype), x, tl.zeros_like(acc), UPCAST, False) * scale[:, None]
        elif INT4:  # weights dequantized and rounded to x's dtype, as the reference does
            acc = _mma((int4_codes(w, zero) * scale[:, None]).to(x.dtype), x, acc, UPCAST, False)
        else:
            acc = _mma(w, x, acc, UPCAST, FP8_X)
        w_ptrs += W_COLS
        x_ptrs += BLOCK_K
    if FP8_X:  # scaling is linear, so split-K partials are scaled before they are summed
        acc = acc * tl.load(x_scale_ptr) * tl.load(w_scale_ptr + rows_w * stride_w_scale)[:, None]
    _write(tl.trans(acc), offs_m, offs_n, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if SPLIT:
        _reduce_if_last(offs_m, offs_n, M, N, b_ptr, y_ptr, ws_ptr, counts_ptr, HAS_BIAS)


INTERPRETED: bool = is_interpreted(_gemv_fma_kernel)
_KERNELS = {"fma": _gemv_fma_kernel, "dot": _gemv_dot_kernel}


@dataclass(frozen=True)
class Plan:
    """How one skinny GEMM runs: inner-product path, tile, K splits, warps, pipeline stages, and (dot path) the
    x rows a program takes."""

    path: str  # "fma" | "dot" | "cublas" | "cublaslt" | "hfma" | "mma" (INT4, one row: kernels/int4_gemv.py)
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    block_m: int = 16
    pad_rows: int = 0  # BLAS paths: x's rows, rounded up to BLAS_ROW_STEP, plus this many run (outputs dropped)

    def __str__(self) -> str:
        if self.path in BLAS_PATHS:
            return f"{self.path}+{self.pad_rows}" if self.pad_rows else self.path
        rows = f" M{self.block_m}" if self.path == "dot" and self.block_m != 16 else ""
        tile = f"N{self.block_n} K{self.block_k} split{self.split_k}"
        return f"{self.path}{rows} {tile} w{self.num_warps} s{self.num_stages}"


def fma_plan(block_n, block_k, split_k=1, num_warps=4, num_stages=1) -> Plan:
    return Plan("fma", block_n, block_k, split_k, num_warps, num_stages)


def dot_plan(block_n, block_k, split_k=1, num_warps=4, num_stages=4, block_m=16) -> Plan:
    return Plan("dot", block_n, block_k, split_k, num_warps, num_stages, block_m)


# cuBLAS as one more candidate, never the default: the tuner keeps it where it streams the weight faster.
CUBLAS = Plan("cublas", 0, 0)
CUBLASLT = Plan("cublaslt", 0, 0)
BLAS_PATHS = ("cublas", "cublaslt")
BLAS_PAD_ROWS = (16, 32)
BLAS_CANDIDATES = [  # above MAX_ROWS
    CUBLAS,
    CUBLASLT,
    *(Plan(plan.path, 0, 0, pad_rows=pad) for pad in BLAS_PAD_ROWS for plan in (CUBLAS, CUBLASLT)),
]


# Candidates per M bucket (next power of two of M), the first being the default when tuning is off: the plans
# that won or came close at the Llama-2-7B shapes in two H200 runs of benchmarks/gemv_microbench.py, plus one
# split-K plan per path for narrow N. fma tiles keep BLOCK_K = 256 * num_warps (see _gemv_fma_kernel).
_DOT_PLANS = [
    dot_plan(32, 256),
    dot_plan(64, 128),
    dot_plan(128, 128, num_stages=3),
    dot_plan(128, 64, num_stages=5),
    dot_plan(16, 512, num_stages=3),
    dot_plan(64, 128, split_k=4),
]
CANDIDATES: dict[int, list[Plan]] = {
    1: [
        fma_plan(2, 1024, num_stages=2),
        fma_plan(4, 1024, num_stages=2),
        fma_plan(2, 2048, num_warps=8, num_stages=2),
        fma_plan(4, 2048, num_warps=8, num_stages=2),
        fma_plan(2, 512, num_warps=2, num_stages=2),
        fma_plan(4, 512, num_warps=2, num_stages=2),
        fma_plan(8, 1024),
        fma_plan(8, 2048, num_warps=8),
        fma_plan(4, 1024, split_k=2, num_stages=2),
        CUBLAS,
    ],
    2: [
        fma_plan(4, 1024),
        fma_plan(4, 1024, num_stages=2),
        fma_plan(2, 1024, num_stages=2),
        fma_plan(4, 512, num_warps=2),
        dot_plan(128, 128, num_stages=3),
        dot_plan(128, 64, num_stages=5),
        dot_plan(64, 128),
        dot_plan(32, 256),
        dot_plan(64, 128, split_k=4),
        CUBLAS,
    ],
    4: [*_DOT_PLANS, dot_plan(32, 256, split_k=2), fma_plan(2, 1024, num_stages=2), CUBLAS],
    8: [*_DOT_PLANS, CUBLAS],
    16: [*_DOT_PLANS, CUBLAS],
}

# FP8 weights (static x scale), up to 4 rows. One byte a weight, so tiles twice as long in K as the
# half-precision ones keep each thread's loads 16 bytes wide.
_FP8_DOT_PLANS = [  # the fastest of a wider set on an H100 at the Llama-2-7B shapes (they won qkv, gate_up, down)
    dot_plan(256, 256, num_warps=8, num_stages=3),
    dot_plan(256, 128, num_warps=8, num_stages=5),
    dot_plan(128, 256, num_stages=4),
    dot_plan(64, 512, num_stages=4),
    dot_plan(64, 256, split_k=4),
]
FP8_CANDIDATES: dict[int, list[Plan]] = {
    1: [
        fma_plan(2, 2048, num_stages=2),
        fma_plan(4, 2048, num_stages=2),
        fma_plan(2, 1024, num_stages=2),
        fma_plan(4, 1024, num_stages=2),
        fma_plan(2, 4096, num_warps=8, num_stages=2),
        fma_plan(4, 4096, num_warps=8, num_stages=2),
        fma_plan(8, 2048),
        # 8 and 16 rows a program quantize each x tile for more weights (run 28: the small GEMMs' best without
        # x's quantization took 16 rows of 1024)
        fma_plan(8, 1024, num_stages=2),
        fma_plan(16, 1024),
        fma_plan(4, 2048, split_k=2, num_stages=2),
        *_FP8_DOT_PLANS,
    ],
    2: [fma_plan(4, 2048), fma_plan(2, 2048, num_stages=2), fma_plan(4, 1024, num_stages=2), *_FP8_DOT_PLANS],
    4: [fma_plan(2, 2048, num_stages=2), fma_plan(2, 1024, num_stages=2), fma_plan(4, 1024), *_FP8_DOT_PLANS],
}
FP8_MAX_ROWS = max(FP8_CANDIDATES)

# Inside `kernels.fixed_plans()` (tensor-parallel invariance): the default plan of each row bucket (none splits
# K), and past MAX_ROWS a tensor-core GEMM tile instead of cuBLAS. One plan for every N and K, so an output of a
# GEMM and of any column shard of it has the same summation order.
FIXED_GEMM_PLAN = dot_plan(128, 64, num_stages=4, block_m=64)


def fixed_plan(rows: int) -> Plan:
    return CANDIDATES[row_bucket(rows)][0] if rows <= MAX_ROWS else FIXED_GEMM_PLAN


class Fp8Scales(NamedTuple):
    """Static FP8 scaling of a GEMV over an FP8 E4M3 weight (see `ops.quant.fp8_linear`): x is quantized with
    `x_scale` ([] float32) as the kernel loads it, and each sum is scaled by x_scale * w_scale ([] or [N])."""

    x_scale: Tensor
    w_scale: Tensor


class Int4Weights(NamedTuple):
    """The groups of an INT4 weight-only GEMM (see `ops.quant.int4_linear`, kernels/int4_gemv.py), whose weight
    is the packed [N, K / 2] uint8 weight viewed as [N, K / 8] int32 words: `scales` and `zeros` (integer-valued,
    or None for the zero point 8) [N, ceil(K / group_size)], one row stride for both, unit column stride. A
    plan's BLOCK_K divides the group size, so a W tile lies in one group."""

    scales: Tensor
    zeros: Tensor | None
    group_size: int


def row_bucket(rows: int) -> int:
    return triton.next_power_of_2(rows)


def _streamable(x: Tensor, weight: Tensor, max_rows: int) -> bool:
    """x [..., K] of 1 to `max_rows` rows against a 2-D weight [N, K] with contiguous rows, on a GPU (or the
    interpreter)."""
    if weight.dim() != 2 or x.dim() == 0:
        return False
    k = x.shape[-1]
    if k == 0 or weight.shape[1] != k or weight.stride(1) != 1 or weight.shape[0] == 0:
        return False
    if x.device.type != "cuda" and not INTERPRETED:
        return False
    return 0 < x.numel() // k <= max_rows


def supports(x: Tensor, weight: Tensor, bias: Tensor | None, max_rows: int = MAX_ROWS) -> bool:
    """Whether `linear(x, weight, bias)` takes the skinny-GEMM kernels (else it runs `F.linear`): up to
    `max_rows` rows of fp16 / bf16."""
    if x.dtype not in HALF_DTYPES or weight.dtype != x.dtype:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.shape != weight.shape[:1]):
        return False
    return _streamable(x, weight, max_rows)


def supports_fp8(
    x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Tensor | None, bias: Tensor | None
) -> bool:
    """Whether `fp8_gemv` runs this FP8 GEMM: at most FP8_MAX_ROWS rows of a half-precision x, an E4M3 weight,
    a static per-tensor x scale, a per-tensor or per-channel weight scale. The caller (`ops.quant.fp8_linear`)
    has checked that the GPU converts E4M3 (compute capability 8.9 or newer)."""
    if x.dtype not in HALF_DTYPES or weight.dtype != torch.float8_e4m3fn:
        return False
    if input_scale is None or input_scale.numel() != 1 or weight_scale.numel() not in (1, weight.shape[0]):
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.shape != weight.shape[:1]):
        return False
    return _streamable(x, weight, FP8_MAX_ROWS)


def _launch(
    x2: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    y2: Tensor,
    plan: Plan,
    quant: Fp8Scales | Int4Weights | None = None,
) -> None:
    (m, k), n = x2.shape, weight.shape[0]
    if quant is not None and plan.path in BLAS_PATHS:
        raise ValueError(f"quantized weights take the fma or dot path, not {plan} (see FP8_CANDIDATES)")
    if plan.path in BLAS_PATHS:
        if y2.shape[0] != plan_rows(m, plan):
            raise ValueError(f"{plan} writes {plan_rows(m, plan)} rows of {m}, but y has {y2.shape[0]}")
        x2 = F.pad(x2, (0, 0, 0, y2.shape[0] - m)) if y2.shape[0] > m else x2
        with _preferred_blas("cublaslt") if plan.path == "cublaslt" else contextlib.nullcontext():
            _blas_mm(x2, weight, bias, y2)
        return
    if plan.path == "fma" and m > 4:
        raise ValueError(f"the fma path takes at most 4 rows, got {m}: use a dot plan (CANDIDATES[{row_bucket(m)}])")
    k_per_split, splits = split_k(k, plan)
    b = bias if bias is not None else y2
    programs = triton.cdiv(n, plan.block_n)
    fp8, int4 = isinstance(quant, Fp8Scales), isinstance(quant, Int4Weights)
    if plan.path == "dot":
        # Triton's software pipeliner streams the W tiles through shared memory, num_stages deep. W tiles that
        # several M blocks read are kept in L2 rather than evicted first.
        evict = "evict_first" if m <= plan.block_m else ""
        meta = dict(UPCAST=INTERPRETED, BLOCK_M=plan.block_m, W_EVICT=evict, num_stages=plan.num_stages)
        programs *= triton.cdiv(m, plan.block_m)
    else:
        # No tl.dot, so Triton does not pipeline these loads: stages > 1 means register double-buffering.
        f16_mac = fp8 and triton.cdiv(k_per_split, plan.block_k) <= F16_MAC_MAX_TILES
        meta = dict(PREFETCH=plan.num_stages > 1, BLOCK_M=row_bucket(m), F16_MAC=f16_mac, num_stages=1)
    meta.update(FP8_X=fp8, INT4=int4, HAS_ZEROS=False, GROUP_SIZE=1)
    meta.update(x_scale_ptr=y2, w_scale_ptr=y2, stride_w_scale=0, w_zero_ptr=y2)  # unread unless FP8_X or INT4
    if fp8:
        w_scale_stride = quant.w_scale.stride(0) if quant.w_scale.numel() > 1 else 0
        meta.update(x_scale_ptr=quant.x_scale, w_scale_ptr=quant.w_scale, stride_w_scale=w_scale_stride)
    elif int4:
        if quant.group_size % plan.block_k:
            raise ValueError(f"{plan}: an INT4 tile lies in one group, so BLOCK_K must divide {quant.group_size}")
        meta.update(w_scale_ptr=quant.scales, stride_w_scale=quant.scales.stride(0), GROUP_SIZE=quant.group_size)
        if quant.zeros is not None:
            meta.update(w_zero_ptr=quant.zeros, HAS_ZEROS=True)
    ws, counts = split_k_buffers(y2, splits, programs)
    _KERNELS[plan.path][(programs, splits)](
        x2, weight, b, y2, ws, counts, m, n, k, x2.stride(0), weight.stride(0), k_per_split,
        HAS_BIAS=bias is not None, SPLIT=splits > 1, EVEN_K=k % plan.block_k == 0,
        BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, num_warps=plan.num_warps, **meta, **pdl.launch_args(x2.device),
    )  # fmt: skip


@contextlib.contextmanager
def _preferred_blas(library: str):
    """torch's GEMMs in `library` meanwhile (a process-wide setting, read as each GEMM launches)."""
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        yield
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def _blas_mm(x2: Tensor, weight: Tensor, bias: Tensor | None, y2: Tensor) -> None:
    if y2.dtype != x2.dtype:  # fp32 sums of half inputs (`linear`'s out_dtype)
        torch.ops.aten.mm.dtype_out(x2, weight.t(), y2.dtype, out=y2)
        if bias is not None:
            y2.add_(bias)
    elif bias is None:
        torch.mm(x2, weight.t(), out=y2)
    else:
        torch.addmm(bias, x2, weight.t(), out=y2)


def split_k(k: int, plan: Plan, max_tiles: int | None = None) -> tuple[int, int]:
    """(K per split, splits) of a plan: `plan.split_k` slices of whole BLOCK_K tiles, none past K (it would only add
    zeros); with `max_tiles`, more slices where one would take more tiles than that."""
    tiles = triton.cdiv(k, plan.block_k)
    wanted = plan.split_k if max_tiles is None else max(plan.split_k, triton.cdiv(tiles, max_tiles))
    k_per_split = triton.cdiv(tiles, wanted) * plan.block_k
    return k_per_split, triton.cdiv(k, k_per_split)


SPLIT_COUNTS = 1 << 20  # output tiles a split-K launch may have (4 MiB of counts a device)


@functools.cache
def split_counts(device: torch.device) -> Tensor:
    """The arrival counts of split-K launches on `device`, one per output tile (program along grid axis 0), for
    `_reduce_if_last`: zero before every launch, as each launch's last programs re-arm them. One buffer per
    device, shared by the GEMVs, which run in stream order (a PDL launch counts only after its wait)."""
    return torch.zeros(SPLIT_COUNTS, dtype=torch.int32, device=device)


def split_k_buffers(y2: Tensor, splits: int, tiles: int) -> tuple[Tensor, Tensor]:
    """(the fp32 partials [splits, M, N], the arrival counts) of a split-K GEMV of `tiles` output tiles; without
    splits, y2 twice (the kernel reads neither)."""
    if splits == 1:
        return y2, y2
    if tiles > SPLIT_COUNTS:
        raise ValueError(f"a split-K GEMV of {tiles} output tiles: at most {SPLIT_COUNTS}, take a larger BLOCK_N")
    return torch.empty((splits, *y2.shape), dtype=torch.float32, device=y2.device), split_counts(y2.device)


def blas_bucket(m: int) -> int:
    """Past MAX_ROWS, the rows a plan is tuned for: m rounded up to BLAS_ROW_STEP."""
    return triton.cdiv(m, BLAS_ROW_STEP) * BLAS_ROW_STEP


def plan_rows(m: int, plan: Plan) -> int:
    """The rows a plan computes for `m` rows of x: a padded BLAS plan's more, m otherwise."""
    return blas_bucket(m) + plan.pad_rows if plan.pad_rows else m


def plan_for(x2: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype, fp8: Fp8Scales | None = None) -> Plan:
    """The cached plan (`cached_plan`) of this (M bucket, N, K, x dtype, weight dtype, y dtype, device); past
    MAX_ROWS the M bucket is M rounded up to BLAS_ROW_STEP, and the plan cuBLAS or cuBLASLt, padded or not."""
    m = x2.shape[0]
    rows = row_bucket(m) if m <= MAX_ROWS else blas_bucket(m)
    key = (rows, weight.shape[0], x2.shape[1], x2.dtype, weight.dtype, dtype, x2.device)
    candidates = FP8_CANDIDATES[rows] if fp8 is not None else CANDIDATES.get(rows, BLAS_CANDIDATES)

    def run(plan: Plan) -> None:
        y2 = torch.empty(plan_rows(m, plan), weight.shape[0], dtype=dtype, device=x2.device)
        _launch(x2, weight, bias, y2, plan, fp8)

    return cached_plan(key, candidates, run)


def _rows_and_output(
    x: Tensor, weight: Tensor, dtype: torch.dtype | None = None, rows: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """x as [M, K] rows, and y [..., N] in `dtype` (default x's) with the [rows, N] buffer it begins (default M
    rows; a padded BLAS plan writes more, and y views the first M, contiguous)."""
    x2, n = rows_view(x), weight.shape[0]
    y2 = torch.empty((rows or x2.shape[0], n), dtype=dtype or x.dtype, device=x.device)
    return x2, y2[: x2.shape[0]].view(*x.shape[:-1], n), y2


def gemv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    plan: Plan | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """x [..., K] @ weight[N, K]^T + bias (`supports` must hold: the tuned plans are the skinny-GEMM kernels up to
    MAX_ROWS rows and cuBLAS / cuBLASLt above; the BLAS plans and dot plans take any rows); `plan` forces one.
    `out_dtype` float32 returns the fp32 sums unrounded."""
    x2 = rows_view(x)
    plan = plan or plan_for(x2, weight, bias, out_dtype or x.dtype)
    _, y, y2 = _rows_and_output(x, weight, out_dtype, plan_rows(x2.shape[0], plan))
    _launch(x2, weight, bias, y2, plan)
    return y


def fp8_gemv(
    x: Tensor,
    weight: Tensor,
    weight_scale: Tensor,
    input_scale: Tensor,
    bias: Tensor | None = None,
    plan: Plan | None = None,
) -> Tensor:
    """`ops.quant.fp8_linear` with a static x scale for at most FP8_MAX_ROWS rows (`supports_fp8` must hold): x
    is quantized inside the GEMV, so a decode step's FP8 GEMM is one kernel that reads each weight byte once."""
    x2, y, y2 = _rows_and_output(x, weight)
    fp8 = Fp8Scales(input_scale.float().reshape(()), weight_scale.float().reshape(-1))
    _launch(x2, weight, bias, y2, plan or plan_for(x2, weight, bias, y2.dtype, fp8), fp8)
    return y


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """CUDA implementation of `trtllm::linear`: the skinny-GEMM kernels up to MAX_ROWS rows, the faster of cuBLAS
    and cuBLASLt up to BLAS_TUNED_ROWS, else cuBLAS; with `out_dtype` float32 (half x) all return the fp32 sums
    unrounded. Inside `kernels.fixed_plans()`, every fp16 / bf16 GEMM runs `fixed_plan` of its row count."""
    if out_dtype == x.dtype:
        out_dtype = None
    if out_dtype not in (None, torch.float32):
        raise ValueError(f"trtllm::linear returns x's dtype or float32 sums, not {out_dtype}")
    if plans_fixed() and supports(x, weight, bias, max_rows=x.numel()):
        return gemv(x, weight, bias, plan=fixed_plan(x.numel() // x.shape[-1]), out_dtype=out_dtype)
    if supports(x, weight, bias, max_rows=BLAS_TUNED_ROWS):
        return gemv(x, weight, bias, out_dtype=out_dtype)
    if out_dtype is None:
        return F.linear(x, weight, bias)
    return gemv(x, weight, bias, plan=CUBLAS, out_dtype=out_dtype)  # any row count
