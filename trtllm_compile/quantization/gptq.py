"""GPTQ (Frantar et al., 2023): round a weight column by column, moving each column's rounding error onto the
columns not rounded yet, so that the layer's outputs on the calibration inputs change least.

With H = sum of x^T x over the calibration tokens of the layer's input, the output error of a weight change D is
trace(D H D^T). Rounding column j by d_j and updating the columns after it by -d_j [H^-1]_{j,:} / [H^-1]_jj
(the inverse restricted to the columns left) is the optimal compensation; the upper Cholesky factor of H^-1 holds
those restricted inverses row by row. This follows the reference implementation: columns in order of decreasing
H_jj ("act order"), blocks of 128 columns with the update of later blocks done once per block, and dampening
of H's diagonal by 1% of its mean.

On a GPU the column loop of each block runs as one Triton kernel (kernels/gptq.py); `round_block` is the PyTorch
loop, what runs on the CPU.

The grid (scales, zero points) is fixed from the unrounded weight before any column is rounded ("static
groups"), so act order needs no regrouping and the rounded weight encodes exactly on that grid.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from trtllm_compile.kernels import TRITON_AVAILABLE
from trtllm_compile.quantization.formats import WeightGrid

logger = logging.getLogger(__name__)


@torch.no_grad()
def gptq_round(
    weight: Tensor, hessian: Tensor, grid: WeightGrid, block_size: int = 128, damping: float = 0.01
) -> Tensor:
    """`weight` [N, K] rounded onto `grid` by GPTQ for inputs whose Gram matrix is `hessian` [K, K]; float32,
    every value a point of the grid."""
    weight = weight.detach().float().clone()
    hessian = hessian.detach().float().clone()
    dead = hessian.diagonal() == 0  # inputs calibration never saw nonzero: their columns cannot matter
    hessian[dead, dead] = 1.0
    order = torch.argsort(hessian.diagonal(), descending=True)
    weight, hessian = weight[:, order], hessian[order][:, order]
    hessian.diagonal().add_(damping * hessian.diagonal().mean())
    inverse = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(hessian)), upper=True)
    rounded = torch.empty_like(weight)
    for start in range(0, weight.shape[1], block_size):
        end = min(start + block_size, weight.shape[1])
        block, block_inverse = weight[:, start:end], inverse[start:end, start:end]
        rounded[:, start:end], errors = _round_block(block, block_inverse, grid, order[start:end])
        weight[:, end:] -= errors @ inverse[start:end, end:]
    return rounded[:, torch.argsort(order)]


def round_block(block: Tensor, block_inverse: Tensor, grid: WeightGrid, columns: Tensor) -> tuple[Tensor, Tensor]:
    """Round `block` [N, B] (the weight's columns `columns`, in the order rounded) column by column onto `grid`,
    each column's error moved onto the block's later columns through `block_inverse` [B, B] (the block's rows of
    the upper Cholesky factor of H^-1); returns the rounded block and the scaled errors [N, B] that the caller
    moves onto the columns after the block. Updates `block` in place."""
    rounded, errors = torch.empty_like(block), torch.empty_like(block)
    for i in range(block.shape[1]):
        column = block[:, i : i + 1]
        rounded[:, i : i + 1] = grid.round(column, columns[i : i + 1])
        errors[:, i : i + 1] = (column - rounded[:, i : i + 1]) / block_inverse[i, i]
        block[:, i + 1 :] -= errors[:, i : i + 1] * block_inverse[i : i + 1, i + 1 :]
    return rounded, errors


def _round_block(block: Tensor, block_inverse: Tensor, grid: WeightGrid, columns: Tensor) -> tuple[Tensor, Tensor]:
    """`round_block` by the Triton kernel on a GPU (one launch instead of a dozen per column), else in PyTorch."""
    if block.is_cuda and TRITON_AVAILABLE:
        from trtllm_compile.kernels import gptq as gptq_kernels

        if gptq_kernels.supports(block, block_inverse, columns):
            return gptq_kernels.round_block(block, block_inverse, grid, columns)
    return round_block(block, block_inverse, grid, columns)


def output_error(weight: Tensor, rounded: Tensor, hessian: Tensor) -> float:
    """trace(D H D^T) / N for D = rounded - weight: the summed squared output error over the calibration tokens,
    per output row."""
    delta = (rounded - weight.float()).double()
    return ((delta @ hessian.double()) * delta).sum().item() / weight.shape[0]
