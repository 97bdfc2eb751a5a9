"""Skinny GEMMs for decode: y = x @ W^T (+ bias) with x [M <= 16, K] and a row-major half-precision W [N, K].

At M <= 16 a GEMM is a weight stream: every byte of W is read once and used M times, so the kernel is judged
by the bandwidth it reaches. Each program owns BLOCK_N rows of W (and, with split-K, one slice of K) and
walks K in BLOCK_K tiles of 16-byte loads, accumulating in fp32. Two inner products:

- `fma` (M <= 4): CUDA-core FMAs into one [BLOCK_N, BLOCK_K] fp32 accumulator per x row, reduced over K once
  at the end, optionally with the next tile's loads issued before this tile's math (register double-buffer).
- `dot` (any M): tensor cores on the swapped product W_tile @ x_tile^T ([BLOCK_N, BLOCK_K] x [BLOCK_K, 16]),
  x's rows padded to 16, with Triton's software pipelining of the W tiles through shared memory.

FP8 E4M3 weights with a static activation scale (`fp8_gemv`, the decode path of `trtllm::fp8_linear`): x is
quantized as it is loaded and the sums are scaled by x_scale * w_scale, so one kernel does what would otherwise
be a quantize kernel plus a cuBLASLt GEMM padded to 16 rows. On the fma path every weight is converted to fp32
on CUDA cores (conversion throughput, not bandwidth, bounds it: 2.2 TB/s on an H100); on the dot path the FP8
tensor cores take the E4M3 tiles as they are.

With split-K the programs write fp32 partials and a second kernel sums them (in a fixed order, so results are
deterministic), adds the bias and casts. A plan (path, tile, split, warps, stages) is timed per
(M bucket, N, K, dtype) on first use, with cuBLAS as one more candidate so a shape where it streams faster
keeps it. This module has its own small tuner instead of the shared `autotune` helper because a plan spans
two kernels and three paths, and the launcher must know the split to size the workspace. Nothing here syncs
the host once a plan is cached, so calls are CUDA-graph capturable.
"""

from __future__ import annotations

import logging
import os
import statistics
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, rows_view
from trtllm_compile.kernels.quantize import inverse_scale, to_e4m3

logger = logging.getLogger(__name__)

MAX_ROWS = 16  # above this a GEMM has enough rows to be compute-bound: cuBLAS runs it
# Hopper's FP8 MMA accumulates in fewer bits than fp32; the dot path adds its sums into fp32 every this many
# products (as cuBLASLt does unless fast accumulation is on)
FP8_PROMOTE_EVERY: tl.constexpr = tl.constexpr(128)
_L2_SWEEP_BYTES = 256 << 20  # larger than any GPU's L2: read before each timed run of a plan
HALF_DTYPES = (torch.float16, torch.bfloat16)


@triton.jit
def _write(out, offs_m, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr):
    """Store the fp32 [BLOCK_M, BLOCK_N] result: a split-K partial, or bias + cast into y [M, N]."""
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    idx = offs_m[:, None] * N + offs_n[None, :]
    if SPLIT:
        tl.store(ws_ptr + pid_k * M * N + idx, out, mask=mask)
    else:
        if HAS_BIAS:
            out += tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + idx, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_k(ptrs, k_ok, MASKED: tl.constexpr, EVICT: tl.constexpr):
    """A W tile ([BLOCK_N, BLOCK_K], EVICT: streamed once) or an x row ([BLOCK_K]) in fp32, zeros where not k_ok."""
    if MASKED:
        if len(ptrs.shape) == 2:
            k_ok = k_ok[None, :]
        if EVICT:
            return tl.load(ptrs, mask=k_ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
        return tl.load(ptrs, mask=k_ok, other=0.0).to(tl.float32)
    if EVICT:
        return tl.load(ptrs, eviction_policy="evict_first").to(tl.float32)
    return tl.load(ptrs).to(tl.float32)


@triton.jit
def _fp8_round(x, inv_scale, FP8_X: tl.constexpr):
    """With FP8_X, x as the FP8 GEMM sees it (`ops.quant.fp8_quantize`: x times 1 / scale, saturated to +-448,
    rounded to E4M3), in fp32; else x."""
    if FP8_X:
        return to_e4m3(x, inv_scale).to(tl.float32)
    return x


@triton.jit
def _fma_tile(
    w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k, k_hi, x_inv_scale,
    MASKED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
):  # fmt: skip
    """The W tile at K offset k and up to four x rows over it, in fp32; with MASKED, zeros from k_hi on."""
    k_ok = (k + tl.arange(0, BLOCK_K)) < k_hi
    w = _load_k(w_ptrs, k_ok, MASKED, True)
    x0 = _fp8_round(_load_k(x0_ptrs, k_ok, MASKED, False), x_inv_scale, FP8_X)
    x1, x2, x3 = x0, x0, x0
    if BLOCK_M > 1:
        x1 = _fp8_round(_load_k(x1_ptrs, k_ok, MASKED, False), x_inv_scale, FP8_X)
    if BLOCK_M > 2:
        x2 = _fp8_round(_load_k(x2_ptrs, k_ok, MASKED, False), x_inv_scale, FP8_X)
        x3 = _fp8_round(_load_k(x3_ptrs, k_ok, MASKED, False), x_inv_scale, FP8_X)
    return w, x0, x1, x2, x3


@triton.jit
def _scaled_sum(acc, x_scale, w_scale, SCALED: tl.constexpr):
    """One x row's [1, BLOCK_N] result from its [BLOCK_N, BLOCK_K] accumulator (scaled in the references' order)."""
    out = tl.sum(acc, axis=1)
    if SCALED:
        out = out * x_scale * w_scale
    return out[None, :]


@triton.jit
def _gemv_fma_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, M, N, K, stride_xm, stride_wn, k_per_split,
    x_scale_ptr, w_scale_ptr, stride_w_scale,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, PREFETCH: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
):  # fmt: skip
    # One [BLOCK_N, BLOCK_K] fp32 accumulator per x row (BLOCK_M <= 4), reduced over K once at the end. The x
    # rows are 1-D loads whose layout is the W tile's column slice when BLOCK_K = 256 * num_warps (8 elements
    # a thread, all warps along K): no shared-memory layout conversion in the loop. With FP8_X (an FP8 E4M3 W,
    # a static per-tensor x scale) x is quantized as it is loaded and the sums scaled by x_scale * w_scale[n].
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_w = tl.minimum(offs_n, N - 1).to(tl.int64)  # rows past N re-read row N - 1, never stored
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (k_lo + offs_k)[None, :]
    x0_ptrs = x_ptr + k_lo + offs_k
    x1_ptrs = x0_ptrs + tl.minimum(1, M - 1) * stride_xm  # rows past M re-read row M - 1, never stored
    x2_ptrs = x0_ptrs + tl.minimum(2, M - 1) * stride_xm
    x3_ptrs = x0_ptrs + tl.minimum(3, M - 1) * stride_xm
    x_scale, x_inv_scale = 1.0, 1.0
    if FP8_X:
        x_scale = tl.load(x_scale_ptr)
        x_inv_scale = inverse_scale(x_scale_ptr)
    acc0 = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    acc1, acc2, acc3 = acc0, acc0, acc0
    if PREFETCH:  # register double-buffering: the next tile's loads are in flight during this tile's FMAs
        w, x0, x1, x2, x3 = _fma_tile(
            w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k_lo, k_hi, x_inv_scale, True, BLOCK_M, BLOCK_K, FP8_X
        )
        for k in range(k_lo, k_hi, BLOCK_K):
            w_cur, a0, a1, a2, a3 = w, x0, x1, x2, x3
            w_ptrs += BLOCK_K
            x0_ptrs += BLOCK_K
            x1_ptrs += BLOCK_K
            x2_ptrs += BLOCK_K
            x3_ptrs += BLOCK_K
            next_k = k + BLOCK_K
            w, x0, x1, x2, x3 = _fma_tile(
                w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, next_k, k_hi, x_inv_scale, True, BLOCK_M, BLOCK_K, FP8_X
            )
            acc0 += w_cur * a0[None, :]
            if BLOCK_M > 1:
                acc1 += w_cur * a1[None, :]
            if BLOCK_M > 2:
                acc2 += w_cur * a2[None, :]
                acc3 += w_cur * a3[None, :]
    else:
        for k in range(k_lo, k_hi, BLOCK_K):
            w, x0, x1, x2, x3 = _fma_tile(
                w_ptrs, x0_ptrs, x1_ptrs, x2_ptrs, x3_ptrs, k, k_hi, x_inv_scale, not EVEN_K, BLOCK_M, BLOCK_K, FP8_X
            )
            acc0 += w * x0[None, :]
            if BLOCK_M > 1:
                acc1 += w * x1[None, :]
            if BLOCK_M > 2:
                acc2 += w * x2[None, :]
                acc3 += w * x3[None, :]
            w_ptrs += BLOCK_K
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
    _write(out0, row, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if BLOCK_M > 1:
        out1 = _scaled_sum(acc1, x_scale, w_scale, FP8_X)
        _write(out1, row + 1, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
    if BLOCK_M > 2:
        out2 = _scaled_sum(acc2, x_scale, w_scale, FP8_X)
        _write(out2, row + 2, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)
        out3 = _scaled_sum(acc3, x_scale, w_scale, FP8_X)
        _write(out3, row + 3, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)


@triton.jit
def _gemv_dot_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, M, N, K, stride_xm, stride_wn, k_per_split,
    x_scale_ptr, w_scale_ptr, stride_w_scale,
    HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FP8_X: tl.constexpr,
):  # fmt: skip
    # With FP8_X (an FP8 E4M3 W, a static per-tensor x scale) x^T tiles are quantized to E4M3 as they are loaded,
    # the FP8 tensor cores multiply them with the W tiles, and the sums are scaled by x_scale * w_scale[n].
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows_x = tl.minimum(offs_m, M - 1)
    rows_w = tl.minimum(offs_n, N - 1).to(tl.int64)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    w_ptrs = w_ptr + rows_w[:, None] * stride_wn + (k_lo + offs_k)[None, :]  # [BLOCK_N, BLOCK_K]
    x_ptrs = x_ptr + rows_x[None, :] * stride_xm + (k_lo + offs_k)[:, None]  # x^T: [BLOCK_K, BLOCK_M]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    x_inv_scale = 1.0
    if FP8_X:
        x_inv_scale = inverse_scale(x_scale_ptr)
    for k in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
            x = tl.load(x_ptrs)
        else:
            k_ok = (k + offs_k) < K
            w = tl.load(w_ptrs, mask=k_ok[None, :], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptrs, mask=k_ok[:, None], other=0.0)
        if FP8_X:
            x = to_e4m3(x, x_inv_scale)
        if UPCAST:  # Triton's interpreter multiplies bf16 dot operands as raw bits; fp32 products are exact
            acc = tl.dot(w.to(tl.float32), x.to(tl.float32), acc)
        elif FP8_X:
            acc = tl.dot(w, x, acc, max_num_imprecise_acc=FP8_PROMOTE_EVERY)
        else:
            acc = tl.dot(w, x, acc)
        w_ptrs += BLOCK_K
        x_ptrs += BLOCK_K
    if FP8_X:  # scaling is linear, so split-K partials are scaled before they are summed
        acc = acc * tl.load(x_scale_ptr) * tl.load(w_scale_ptr + rows_w * stride_w_scale)[:, None]
    _write(tl.trans(acc), offs_m, offs_n, pid_k, M, N, b_ptr, y_ptr, ws_ptr, HAS_BIAS, SPLIT)


@triton.jit
def _split_k_reduce_kernel(ws_ptr, b_ptr, y_ptr, MN, N, splits, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in range(splits):
        acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


INTERPRETED: bool = is_interpreted(_gemv_fma_kernel)
_KERNELS = {"fma": _gemv_fma_kernel, "dot": _gemv_dot_kernel}


@dataclass(frozen=True)
class Plan:
    """How one skinny GEMM runs: inner-product path, tile, K splits, warps and pipeline stages."""

    path: str  # "fma" | "dot" | "cublas"
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1

    def __str__(self) -> str:
        if self.path == "cublas":
            return "cublas"
        return f"{self.path} N{self.block_n} K{self.block_k} split{self.split_k} w{self.num_warps} s{self.num_stages}"


def _fma(block_n, block_k, split_k=1, num_warps=4, num_stages=1) -> Plan:
    return Plan("fma", block_n, block_k, split_k, num_warps, num_stages)


def _dot(block_n, block_k, split_k=1, num_warps=4, num_stages=4) -> Plan:
    return Plan("dot", block_n, block_k, split_k, num_warps, num_stages)


# cuBLAS as one more candidate, never the default: the tuner keeps it where it streams the weight faster.
CUBLAS = Plan("cublas", 0, 0)


# Candidates per M bucket (next power of two of M), the first being the default when tuning is off: the plans
# that won or came close at the Llama-2-7B shapes in two H200 runs of benchmarks/gemv_microbench.py, plus one
# split-K plan per path for narrow N. fma tiles keep BLOCK_K = 256 * num_warps (see _gemv_fma_kernel).
_DOT_PLANS = [
    _dot(32, 256),
    _dot(64, 128),
    _dot(128, 128, num_stages=3),
    _dot(128, 64, num_stages=5),
    _dot(16, 512, num_stages=3),
    _dot(64, 128, split_k=4),
]
CANDIDATES: dict[int, list[Plan]] = {
    1: [
        _fma(2, 1024, num_stages=2),
        _fma(4, 1024, num_stages=2),
        _fma(2, 2048, num_warps=8, num_stages=2),
        _fma(4, 2048, num_warps=8, num_stages=2),
        _fma(2, 512, num_warps=2, num_stages=2),
        _fma(4, 512, num_warps=2, num_stages=2),
        _fma(8, 1024),
        _fma(8, 2048, num_warps=8),
        _fma(4, 1024, split_k=2, num_stages=2),
        CUBLAS,
    ],
    2: [
        _fma(4, 1024),
        _fma(4, 1024, num_stages=2),
        _fma(2, 1024, num_stages=2),
        _fma(4, 512, num_warps=2),
        _dot(128, 128, num_stages=3),
        _dot(128, 64, num_stages=5),
        _dot(64, 128),
        _dot(32, 256),
        _dot(64, 128, split_k=4),
        CUBLAS,
    ],
    4: [*_DOT_PLANS, _dot(32, 256, split_k=2), _fma(2, 1024, num_stages=2), CUBLAS],
    8: [*_DOT_PLANS, CUBLAS],
    16: [*_DOT_PLANS, CUBLAS],
}

# FP8 weights (static x scale), up to 4 rows. One byte a weight, so tiles twice as long in K as the
# half-precision ones keep each thread's loads 16 bytes wide.
_FP8_DOT_PLANS = [  # the fastest of a wider set on an H100 at the Llama-2-7B shapes (they won qkv, gate_up, down)
    _dot(256, 256, num_warps=8, num_stages=3),
    _dot(256, 128, num_warps=8, num_stages=5),
    _dot(128, 256, num_stages=4),
    _dot(64, 512, num_stages=4),
    _dot(64, 256, split_k=4),
]
FP8_CANDIDATES: dict[int, list[Plan]] = {
    1: [
        _fma(2, 2048, num_stages=2),
        _fma(4, 2048, num_stages=2),
        _fma(2, 1024, num_stages=2),
        _fma(4, 1024, num_stages=2),
        _fma(2, 4096, num_warps=8, num_stages=2),
        _fma(4, 4096, num_warps=8, num_stages=2),
        _fma(8, 2048),
        _fma(4, 2048, split_k=2, num_stages=2),
        *_FP8_DOT_PLANS,
    ],
    2: [_fma(4, 2048), _fma(2, 2048, num_stages=2), _fma(4, 1024, num_stages=2), *_FP8_DOT_PLANS],
    4: [_fma(2, 2048, num_stages=2), _fma(2, 1024, num_stages=2), _fma(4, 1024), *_FP8_DOT_PLANS],
}
FP8_MAX_ROWS = max(FP8_CANDIDATES)


class Fp8Scales(NamedTuple):
    """Static FP8 scaling of a GEMV over an FP8 E4M3 weight (see `ops.quant.fp8_linear`): x is quantized with
    `x_scale` ([] float32) as the kernel loads it, and each sum is scaled by x_scale * w_scale ([] or [N])."""

    x_scale: Tensor
    w_scale: Tensor


_plans: dict[tuple, Plan] = {}
tuning_log: dict[tuple, dict[str, float]] = {}  # key -> {plan: median ms}, for benchmarks and debugging


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


def supports(x: Tensor, weight: Tensor, bias: Tensor | None) -> bool:
    """Whether `linear(x, weight, bias)` takes the skinny-GEMM kernels (else it runs `F.linear`)."""
    if x.dtype not in HALF_DTYPES or weight.dtype != x.dtype:
        return False
    if bias is not None and (bias.dtype != x.dtype or bias.shape != weight.shape[:1]):
        return False
    return _streamable(x, weight, MAX_ROWS)


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
    x2: Tensor, weight: Tensor, bias: Tensor | None, y2: Tensor, plan: Plan, fp8: Fp8Scales | None = None
) -> None:
    (m, k), n = x2.shape, weight.shape[0]
    if fp8 is not None and plan.path == "cublas":
        raise ValueError(f"FP8 weights take the fma or dot path, not {plan} (see FP8_CANDIDATES)")
    if plan.path == "cublas":
        if bias is None:
            torch.mm(x2, weight.t(), out=y2)
        else:
            torch.addmm(bias, x2, weight.t(), out=y2)
        return
    if plan.path == "fma" and m > 4:
        raise ValueError(f"the fma path takes at most 4 rows, got {m}: use a dot plan (CANDIDATES[{row_bucket(m)}])")
    k_per_split = triton.cdiv(triton.cdiv(k, plan.split_k), plan.block_k) * plan.block_k
    splits = triton.cdiv(k, k_per_split)  # a split past K would only add zeros
    ws = torch.empty((splits, m, n), dtype=torch.float32, device=x2.device) if splits > 1 else y2
    b = bias if bias is not None else y2
    if plan.path == "dot":
        # Triton's software pipeliner streams the W tiles through shared memory, num_stages deep.
        meta = dict(UPCAST=INTERPRETED, BLOCK_M=16, num_stages=plan.num_stages)
    else:
        # No tl.dot, so Triton does not pipeline these loads: stages > 1 means register double-buffering.
        meta = dict(PREFETCH=plan.num_stages > 1, BLOCK_M=row_bucket(m), num_stages=1)
    meta.update(FP8_X=fp8 is not None, x_scale_ptr=y2, w_scale_ptr=y2, stride_w_scale=0)  # unread without FP8_X
    if fp8 is not None:
        w_scale_stride = fp8.w_scale.stride(0) if fp8.w_scale.numel() > 1 else 0
        meta.update(x_scale_ptr=fp8.x_scale, w_scale_ptr=fp8.w_scale, stride_w_scale=w_scale_stride)
    _KERNELS[plan.path][(triton.cdiv(n, plan.block_n), splits)](
        x2, weight, b, y2, ws, m, n, k, x2.stride(0), weight.stride(0), k_per_split,
        HAS_BIAS=bias is not None, SPLIT=splits > 1, EVEN_K=k % plan.block_k == 0,
        BLOCK_N=plan.block_n, BLOCK_K=plan.block_k, num_warps=plan.num_warps, **meta,
    )  # fmt: skip
    if splits > 1:
        block = 1024
        _split_k_reduce_kernel[(triton.cdiv(m * n, block),)](
            ws, b, y2, m * n, n, splits, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4
        )


def _graph_ms(fn, device: torch.device, reps: int = 20) -> float:
    """Median ms of `fn` replayed from a CUDA graph right after a 256 MiB read sweeps L2: how a decode step's
    GEMMs run (weights not cached, the cache holding clean lines). triton's do_bench zeroes its flush buffer
    instead, and writing those dirty lines back inside the timed kernel cost cuBLAS and the dot path 6-11 us
    but the fma path (whose loads are evict-first) 3 us on an H200, which misranked them."""
    fn()  # compile and allocate outside the capture
    sweep = torch.empty(_L2_SWEEP_BYTES, dtype=torch.uint8, device=device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        sweep.sum()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _bench_ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20, return_mode="median")


def _tune(
    key: tuple, x2: Tensor, weight: Tensor, bias: Tensor | None, y2: Tensor, fp8: Fp8Scales | None = None
) -> Plan:
    def launcher(plan: Plan):
        return lambda: _launch(x2, weight, bias, y2, plan, fp8)

    # A plan that cannot be captured is no use to decode's CUDA graphs; eager timing only if none can be.
    for timer in (lambda fn: _graph_ms(fn, x2.device), _bench_ms):
        times = {}
        for plan in _candidates(key[0], fp8):
            try:
                times[plan] = timer(launcher(plan))
            except Exception as error:  # a tile that does not fit this GPU (shared memory, registers): skip it
                logger.debug("gemv plan %s failed for %s: %s", plan, key, error)
        if times:
            break
    else:
        raise RuntimeError(f"no gemv plan ran for {key}; see the debug log of {__name__}")
    best = min(times, key=times.get)
    tuning_log[key] = {str(p): t for p, t in times.items()}
    logger.info("gemv %s: %s (%.1f us)", key, best, 1e3 * times[best])
    return best


def _candidates(bucket: int, fp8: Fp8Scales | None) -> list[Plan]:
    return (FP8_CANDIDATES if fp8 is not None else CANDIDATES)[bucket]


def plan_for(x2: Tensor, weight: Tensor, bias: Tensor | None, y2: Tensor, fp8: Fp8Scales | None = None) -> Plan:
    """The cached plan of this (M bucket, N, K, x dtype, weight dtype, device); timed on the first call unless
    tuning is off (TRTLLM_TRITON_AUTOTUNE=0, the interpreter, or inside a CUDA-graph capture: then the bucket's
    default)."""
    key = (row_bucket(x2.shape[0]), weight.shape[0], x2.shape[1], x2.dtype, weight.dtype, x2.device)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    if INTERPRETED or os.environ.get("TRTLLM_TRITON_AUTOTUNE", "1") == "0":
        return _candidates(key[0], fp8)[0]
    if torch.cuda.is_current_stream_capturing():
        logger.warning("gemv %s first seen inside a CUDA-graph capture: default plan, untuned", key[:3])
        return _candidates(key[0], fp8)[0]
    plan = _plans[key] = _tune(key, x2, weight, bias, y2, fp8)
    return plan


def _rows_and_output(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x as [M, K] rows, and y [..., N] in x's dtype with its [M, N] view."""
    n = weight.shape[0]
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    return rows_view(x), y, y.view(-1, n)


def gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None, plan: Plan | None = None) -> Tensor:
    """x [..., K] @ weight[N, K]^T + bias for at most MAX_ROWS rows (`supports` must hold); `plan` forces one."""
    x2, y, y2 = _rows_and_output(x, weight)
    _launch(x2, weight, bias, y2, plan or plan_for(x2, weight, bias, y2))
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
    _launch(x2, weight, bias, y2, plan or plan_for(x2, weight, bias, y2, fp8), fp8)
    return y


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """CUDA implementation of `trtllm::linear`: the skinny-GEMM kernels up to MAX_ROWS rows, else cuBLAS."""
    if supports(x, weight, bias):
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)
