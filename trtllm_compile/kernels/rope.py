"""Rotary position embedding (rotate-half and interleaved, partial rotary) over strided 4-D layouts.

`x` is viewed as [A0, A1, A2, D] ([B, H, S, D] or [B, S, H, D]); cos/sin are expanded to x[..., :R]'s shape
so their broadcast dims get stride 0 and one kernel serves every layout. A program rotates BLOCK_ROWS rows.
Each product and the sum are rounded to the promoted dtype of (x, cos, sin), as eager PyTorch does in
`trtllm::rope`, so results equal the reference's to the bit (see `rotate`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import autotune, is_interpreted, pdl, tl_dtype
from trtllm_compile.kernels.pdl import start_next_then_wait
from trtllm_compile.ops.rope import check_rotary_dim

_CONFIGS = [triton.Config({"BLOCK_ROWS": r}, num_warps=w) for r, w in ((4, 4), (1, 1), (2, 2), (8, 4), (16, 8))]


@triton.jit
def _round(v, COMPUTE_DTYPE: tl.constexpr):
    # Round an fp32 value to the dtype eager PyTorch computes in (a no-op for fp32).
    return v.to(COMPUTE_DTYPE).to(tl.float32)


@triton.jit
def rotate(x, partner, cos, sin, sign, COMPUTE_DTYPE: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """x * cos + rotate(x) * sin (fp32 inputs), where rotate(x) is sign * partner: -1 at the first feature of a
    rotated pair, +1 at the second. The products and the sum are rounded as eager rounds them, then cast to
    OUT_DTYPE. Kernels that call it compile without FP fusion (`enable_fp_fusion=False`): with it, LLVM narrows
    the fp32 ops to bf16 ones and fuses a product into the sum, skipping its rounding, and results then differed
    from eager's in the last bit."""
    out = _round(x * cos, COMPUTE_DTYPE) + sign * _round(partner * sin, COMPUTE_DTYPE)
    return out.to(COMPUTE_DTYPE).to(OUT_DTYPE)


@triton.jit
def _rope_kernel(
    x_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    n_rows,
    A1,
    A2,
    xs0,
    xs1,
    xs2,
    cs0,
    cs1,
    cs2,
    ss0,
    ss1,
    ss2,
    os0,
    os1,
    os2,
    HALF: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    PDL: tl.constexpr,
):
    start_next_then_wait(PDL)
    rows = tl.program_id(0).to(tl.int64) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < n_rows
    i0, i1, i2 = rows // (A1 * A2), (rows // A2) % A1, rows % A2
    x_row = (i0 * xs0 + i1 * xs1 + i2 * xs2)[:, None]
    c_row = (i0 * cs0 + i1 * cs1 + i2 * cs2)[:, None]
    s_row = (i0 * ss0 + i1 * ss1 + i2 * ss2)[:, None]
    o_row = (i0 * os0 + i1 * os1 + i2 * os2)[:, None]

    j = tl.arange(0, BLOCK_H)
    mask = row_ok[:, None] & (j < HALF)[None, :]
    if INTERLEAVED:  # pairs (2j, 2j + 1)
        first, second = (2 * j)[None, :], (2 * j + 1)[None, :]
    else:  # halves (j, j + R/2)
        first, second = j[None, :], (j + HALF)[None, :]
    x1 = tl.load(x_ptr + x_row + first, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + x_row + second, mask=mask, other=0.0).to(tl.float32)
    c1 = tl.load(cos_ptr + c_row + first, mask=mask, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + c_row + second, mask=mask, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + s_row + first, mask=mask, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + s_row + second, mask=mask, other=0.0).to(tl.float32)
    out_ty = out_ptr.dtype.element_ty
    tl.store(out_ptr + o_row + first, rotate(x1, x2, c1, s1, -1.0, COMPUTE_DTYPE, out_ty), mask=mask)
    tl.store(out_ptr + o_row + second, rotate(x2, x1, c2, s2, 1.0, COMPUTE_DTYPE, out_ty), mask=mask)

    if HEAD_DIM > 2 * HALF:  # partial rotary: the remaining features pass through
        p = 2 * HALF + tl.arange(0, BLOCK_P)
        pmask = row_ok[:, None] & (p < HEAD_DIM)[None, :]
        rest = tl.load(x_ptr + x_row + p[None, :], mask=pmask, other=0.0)
        tl.store(out_ptr + o_row + p[None, :], rest, mask=pmask)


_rope_tuned = autotune(_CONFIGS, key=["HALF", "HEAD_DIM"])(_rope_kernel)
INTERPRETED: bool = is_interpreted(_rope_kernel)


def _as_4d(t: Tensor) -> Tensor:
    if t.dim() > 4:
        raise NotImplementedError(
            f"trtllm::rope kernel takes x of rank <= 4, got shape {tuple(t.shape)}; "
            "reshape the leading dims into at most three before calling it"
        )
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first `cos.shape[-1]` features of `x` (see `trtllm_compile.ops.rope`)."""
    rotary_dim, head_dim = cos.shape[-1], x.shape[-1]
    check_rotary_dim(rotary_dim, head_dim)
    if x.stride(-1) != 1:
        x = x.contiguous()
    x4 = _as_4d(x)
    rot_shape = (*x4.shape[:-1], rotary_dim)
    cos4 = _as_4d(cos if cos.stride(-1) == 1 else cos.contiguous()).expand(rot_shape)
    sin4 = _as_4d(sin if sin.stride(-1) == 1 else sin.contiguous()).expand(rot_shape)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    out4 = out.view(x4.shape)
    n_rows = x4.shape[0] * x4.shape[1] * x4.shape[2]
    if n_rows == 0 or head_dim == 0:
        return out
    compute = torch.promote_types(torch.promote_types(x.dtype, cos.dtype), sin.dtype)
    half = rotary_dim // 2
    grid = lambda meta: (triton.cdiv(n_rows, meta["BLOCK_ROWS"]),)
    _rope_tuned[grid](
        x4,
        cos4,
        sin4,
        out4,
        n_rows,
        x4.shape[1],
        x4.shape[2],
        *x4.stride()[:3],
        *cos4.stride()[:3],
        *sin4.stride()[:3],
        *out4.stride()[:3],
        HALF=half,
        HEAD_DIM=head_dim,
        INTERLEAVED=interleaved,
        COMPUTE_DTYPE=tl_dtype(compute),
        BLOCK_H=triton.next_power_of_2(max(half, 1)),
        BLOCK_P=triton.next_power_of_2(max(head_dim - rotary_dim, 1)),
        enable_fp_fusion=False,
        **pdl.launch_args(x.device),
    )
    return out
