"""RMSNorm and residual-add + RMSNorm: one program per row, fp32 accumulation.

The casts follow `trtllm_compile.ops.norm.rms_norm_reference` step for step, because in bf16 they decide the
result: the sum `x + residual` is rounded to its dtype before it is normalized; the Llama form rounds the
normalized value to x's dtype and then multiplies by the weight (in the promoted dtype); the Gemma form scales
by `1 + weight` in fp32 and rounds once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import autotune, is_interpreted, pdl, rows_view
from trtllm_compile.kernels.pdl import start_next_then_wait

_CONFIGS = [triton.Config({}, num_warps=w) for w in (4, 1, 2, 8, 16)]


@triton.jit
def _normalize_row(x, w, cols, mask, out_ptr, N, eps, x_dtype: tl.constexpr, UNIT_OFFSET: tl.constexpr):
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    normed = x * rstd
    if UNIT_OFFSET:
        y = normed * (1.0 + w)
    else:
        y = normed.to(x_dtype).to(tl.float32) * w
    tl.store(out_ptr + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def rms_norm_row(
    x, w, cols, mask, res_ptr, sum_ptr, out_ptr, N, eps,
    x_dtype: tl.constexpr, HAS_RESIDUAL: tl.constexpr, UNIT_OFFSET: tl.constexpr,
):  # fmt: skip
    """Normalize one row, given as fp32 values `x` of dtype `x_dtype`, with the weight `w` (fp32 values, loaded by
    the caller as early as it may: `weight_row`); the pointers are this row's. With HAS_RESIDUAL the residual row
    is added first and the sum, rounded to sum_ptr's dtype, stored and normalized. Shared with the all-reduce
    kernel that ends in this norm (kernels/all_reduce.py)."""
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        summed = (x + r).to(sum_ptr.dtype.element_ty)
        tl.store(sum_ptr + cols, summed, mask=mask)
        _normalize_row(summed.to(tl.float32), w, cols, mask, out_ptr, N, eps, sum_ptr.dtype.element_ty, UNIT_OFFSET)
    else:
        _normalize_row(x, w, cols, mask, out_ptr, N, eps, x_dtype, UNIT_OFFSET)


@triton.jit
def weight_row(w_ptr, cols, mask):
    """The norm's weight as fp32 values. A constant: kernels load it before waiting for the kernel before (PDL),
    where its latency is hidden; loaded after the reduction it added one to every norm of a decode step."""
    return tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    stride_x,
    stride_r,
    stride_o,
    stride_s,
    N,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    UNIT_OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = weight_row(w_ptr, cols, mask)
    start_next_then_wait(PDL)
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    rms_norm_row(
        x, w, cols, mask, res_ptr + row * stride_r, sum_ptr + row * stride_s, out_ptr + row * stride_o,
        N, eps, x_ptr.dtype.element_ty, HAS_RESIDUAL, UNIT_OFFSET,
    )  # fmt: skip


_rms_norm_tuned = autotune(_CONFIGS, key=["BLOCK_N"])(_rms_norm_kernel)
INTERPRETED: bool = is_interpreted(_rms_norm_kernel)


def normed_dtype(x_dtype: torch.dtype, weight: Tensor, unit_offset: bool) -> torch.dtype:
    """The norm's output dtype, as `ops.norm.rms_norm_reference` gives it."""
    return x_dtype if unit_offset else torch.promote_types(x_dtype, weight.dtype)


def _launch(x2, res2, weight, out2, sum2, eps: float, unit_offset: bool) -> None:
    rows, n = x2.shape
    if rows == 0 or n == 0:
        return
    has_res = res2 is not None
    _rms_norm_tuned[(rows,)](
        x2,
        res2 if has_res else x2,
        weight,
        out2,
        sum2 if has_res else out2,
        x2.stride(0),
        res2.stride(0) if has_res else 0,
        out2.stride(0),
        sum2.stride(0) if has_res else 0,
        n,
        eps,
        HAS_RESIDUAL=has_res,
        UNIT_OFFSET=unit_offset,
        BLOCK_N=triton.next_power_of_2(n),
        **pdl.launch_args(x2.device),
    )


def rms_norm(x: Tensor, weight: Tensor, eps: float, unit_offset: bool = False) -> Tensor:
    """RMSNorm over the last dim of `x` (any leading shape; the last dim must match `weight`)."""
    x2, weight = rows_view(x), weight.contiguous()
    out = torch.empty(x.shape, dtype=normed_dtype(x.dtype, weight, unit_offset), device=x.device)
    _launch(x2, None, weight, out.view(-1, x.shape[-1]), None, eps, unit_offset)
    return out


def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, unit_offset: bool = False
) -> tuple[Tensor, Tensor]:
    """(rms_norm(x + residual), x + residual) in one pass over the row."""
    shape = torch.broadcast_shapes(x.shape, residual.shape)
    x2, res2 = rows_view(x.expand(shape)), rows_view(residual.expand(shape))
    weight = weight.contiguous()
    sum_dtype = torch.promote_types(x.dtype, residual.dtype)
    summed = torch.empty(shape, dtype=sum_dtype, device=x.device)
    out = torch.empty(shape, dtype=normed_dtype(sum_dtype, weight, unit_offset), device=x.device)
    _launch(x2, res2, weight, out.view(-1, shape[-1]), summed.view(-1, shape[-1]), eps, unit_offset)
    return out, summed
