"""GPTQ's inner loop on the GPU: one block of up to 128 weight columns rounded column by column, each column's
rounding error moved onto the block's later columns (quantization/gptq.py holds the algorithm and the PyTorch
loop this replaces).

In PyTorch each column is a dozen small launches, about 230 us on an H200, and a 7B Llama has 0.75 M columns
(run 96: 173 s). Here one program keeps a tile of rows times the whole block in registers and walks the columns
itself; the later blocks' update (a GEMM) stays with the caller. Rows are independent, so the grid is over rows.
The grid values are computed as `formats.WeightGrid.round` computes them: E4M3 through the same saturating
cast, INT8 and INT4 by correctly rounded division and round-half-to-even.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted
from trtllm_compile.kernels.quantize import to_e4m3

if TYPE_CHECKING:
    from trtllm_compile.quantization.formats import WeightGrid

ROWS = 16
_KINDS = {"fp8": 0, "int8": 1, "int4": 2}


@triton.jit
def _round_half_even(x):
    # fp32 addition rounds to nearest even: adding and taking away 1.5 * 2**23 leaves x rounded so (|x| < 2**22)
    return (x + 12582912.0) - 12582912.0


@triton.jit
def _gptq_block_kernel(
    w_ptr,
    inv_ptr,
    rounded_ptr,
    errors_ptr,
    scales_ptr,
    zeros_ptr,
    columns_ptr,
    N,
    B,
    group_size,
    stride_w,
    stride_inv_row,
    stride_inv_col,
    stride_out,
    stride_scales,
    KIND: tl.constexpr,
    HAS_ZEROS: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BLOCK)
    in_rows = rows < N
    tile = in_rows[:, None] & (cols < B)[None, :]
    w = tl.load(w_ptr + rows[:, None].to(tl.int64) * stride_w + cols[None, :], mask=tile, other=0.0)
    rounded = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    errors = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    scale_rows = scales_ptr + rows.to(tl.int64) * stride_scales
    for i in range(B):
        at_i = cols[None, :] == i
        column = tl.sum(tl.where(at_i, w, 0.0), axis=1)
        if KIND == 2:
            group = tl.load(columns_ptr + i) // group_size
        else:
            group = 0
        scale = tl.load(scale_rows + group, mask=in_rows, other=1.0)
        if KIND == 0:
            value = to_e4m3(column, tl.math.div_rn(1.0, scale)).to(tl.float32) * scale
        elif KIND == 1:
            value = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(column, scale)), -127.0), 127.0) * scale
        else:
            codes = _round_half_even(tl.math.div_rn(column, scale))
            if HAS_ZEROS:
                zero = tl.load(zeros_ptr + rows.to(tl.int64) * stride_scales + group, mask=in_rows)
                value = (tl.minimum(tl.maximum(codes + zero, 0.0), 15.0) - zero) * scale
            else:
                value = tl.minimum(tl.maximum(codes, -8.0), 7.0) * scale
        inverse_row = inv_ptr + i * stride_inv_row
        error = (column - value) / tl.load(inverse_row + i * stride_inv_col)
        later = tl.load(inverse_row + cols * stride_inv_col, mask=(cols > i) & (cols < B), other=0.0)
        w -= error[:, None] * later[None, :]
        rounded = tl.where(at_i, value[:, None], rounded)
        errors = tl.where(at_i, error[:, None], errors)
    out = rows[:, None].to(tl.int64) * stride_out + cols[None, :]
    tl.store(rounded_ptr + out, rounded, mask=tile)
    tl.store(errors_ptr + out, errors, mask=tile)


INTERPRETED: bool = is_interpreted(_gptq_block_kernel)


def supports(block: Tensor, block_inverse: Tensor, columns: Tensor) -> bool:
    """A float32 block of at most 128 columns of unit stride, a float32 inverse (any strides) and contiguous column
    indices, on a GPU (or the interpreter)."""
    if block.dtype != torch.float32 or block_inverse.dtype != torch.float32 or block.shape[1] > 128:
        return False
    if block.stride(1) != 1 or not columns.is_contiguous():
        return False
    return INTERPRETED or block.device.type == "cuda"


def round_block(block: Tensor, block_inverse: Tensor, grid: WeightGrid, columns: Tensor) -> tuple[Tensor, Tensor]:
    """`gptq.round_block` in one launch: `block` [N, B] float32 (the weight's columns `columns`, in the order
    rounded), `block_inverse` [B, B] (its rows of the upper Cholesky factor of H^-1) -> (rounded [N, B], the
    scaled errors [N, B] the caller moves onto later blocks)."""
    rows, width = block.shape
    rounded, errors = torch.empty_like(block), torch.empty_like(block)
    scales = grid.scales.float().contiguous()
    zeros = grid.zeros.float().contiguous() if grid.zeros is not None else scales  # unread without zero points
    _gptq_block_kernel[(triton.cdiv(rows, ROWS),)](
        block,
        block_inverse,
        rounded,
        errors,
        scales,
        zeros,
        columns,  # read only for INT4: a column's group
        rows,
        width,
        max(grid.group_size, 1),
        block.stride(0),
        block_inverse.stride(0),
        block_inverse.stride(1),  # a Cholesky factor comes column-major
        rounded.stride(0),
        scales.stride(0) if grid.kind == "int4" else 1,
        KIND=_KINDS[grid.kind],
        HAS_ZEROS=grid.zeros is not None,
        ROWS=ROWS,
        BLOCK=128,
    )
    return rounded, errors
