"""Greedy sampling on the GPU: each row's argmax, one program a row; and the feed of sampled tokens into the
next step's inputs.

torch's argmax of a Llama [1, 32000] row, after the float32 cast the sampler made, cost 14 us of a 2 ms INT4
decode step on an H100 (docs/benchmarks.md run 68: the cast 4, the argmax's single-block reduction 10). Here a
row is read once in its own dtype (the argmax of bf16 values is that of their exact float32 cast), in tiles of
up to MAX_BLOCK values by 16 warps. Ties keep the first index, as torch's argmax does, and NaN counts as the
largest value (torch's too).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted

MAX_BLOCK = 16384  # a row's tile: 32 values a thread of 16 warps; Llama's 32000 in two


@triton.jit
def _argmax_kernel(logits_ptr, out_ptr, stride, vocab, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    best = -float("inf")
    best_index = 0
    for start in range(0, vocab, BLOCK):
        offsets = start + tl.arange(0, BLOCK)
        x = tl.load(logits_ptr + row * stride + offsets, mask=offsets < vocab, other=-float("inf")).to(tl.float32)
        x = tl.where(x != x, float("inf"), x)  # NaN
        value, index = tl.max(x, axis=0, return_indices=True, return_indices_tie_break_left=True)
        better = value > best  # strictly: an earlier tile keeps its tie
        best_index = tl.where(better, start + index, best_index)
        best = tl.where(better, value, best)
    tl.store(out_ptr + row, best_index.to(tl.int64))


@triton.jit
def _feed_kernel(token_ids_ptr, pending_at_ptr, samples_ptr, width, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    where = tl.load(pending_at_ptr + i, mask=i < width, other=-1)
    rows = tl.load(pending_at_ptr + width + i, mask=i < width, other=0)
    fed = where >= 0
    tl.store(token_ids_ptr + where, tl.load(samples_ptr + rows, mask=fed), mask=fed)


INTERPRETED: bool = is_interpreted(_argmax_kernel)


def feed_samples(token_ids: Tensor, pending_at: Tensor, samples: Tensor) -> None:
    """token_ids[pending_at[0, i]] = samples[pending_at[1, i]] for each i with pending_at[0, i] >= 0, in one
    program: `pending_at` is [2, W] int64 (contiguous), token_ids and samples int64."""
    if pending_at.dim() != 2 or pending_at.shape[0] != 2 or not pending_at.is_contiguous():
        raise ValueError(f"pending_at must be a contiguous [2, W], got {tuple(pending_at.shape)}")
    if token_ids.dtype != samples.dtype:
        raise ValueError(f"token_ids ({token_ids.dtype}) and samples ({samples.dtype}) must share a dtype")
    width = pending_at.shape[1]
    if width:
        _feed_kernel[(1,)](token_ids, pending_at, samples, width, BLOCK=triton.next_power_of_2(width))


def argmax(logits: Tensor, block: int | None = None, out: Tensor | None = None) -> Tensor:
    """int64 [N]: the index of each row's largest value of `logits` [N, V] (a float dtype, last dim contiguous),
    as `logits.argmax(-1)`, into `out` if given; `block` forces the tile (a power of two; default: the row, up
    to MAX_BLOCK)."""
    if logits.dim() != 2 or logits.stride(1) != 1 or not logits.dtype.is_floating_point:
        shape = tuple(logits.shape)
        raise ValueError(f"argmax takes [N, V] float logits with contiguous rows, got {shape} {logits.dtype}")
    rows, vocab = logits.shape
    if out is not None and (out.shape != (rows,) or out.dtype != torch.int64):
        raise ValueError(f"argmax writes int64 [{rows}], got {out.dtype} {tuple(out.shape)}")
    out = out if out is not None else torch.empty(rows, dtype=torch.int64, device=logits.device)
    if rows == 0:
        return out
    block = block or min(triton.next_power_of_2(vocab), MAX_BLOCK)
    _argmax_kernel[(rows,)](logits, out, logits.stride(0), vocab, BLOCK=block, num_warps=16 if block >= 4096 else 4)
    return out
