"""One-shot all-reduce of a few rows over peer memory, optionally ending in the residual add + RMSNorm that
follows every all-reduce of a tensor-parallel decoder layer.

Every rank owns one buffer that all ranks can address (NVLink peer memory; `parallel.peer_all_reduce` makes it
with torch's symmetric memory): a flag array, then two slots of [max_rows, row_width] values (rows padded to
16-byte multiples). One program per row: store this rank's row in its own slot, raise the row's flag in every
peer's buffer (release, system scope), wait for every peer's flag in its own (acquire), then read the row from
every rank's slot and sum in rank order in fp32, so every rank gets the same bits.

One barrier per call, where torch's one-shot kernel has two: the slot alternates with each call of a row
(double buffering), and a rank can only write a slot again after the next call's barrier, which every peer
reaches after it has finished reading this call's slot (kernels on a stream run in order). Flags carry a
per-row call count kept on the device, so the kernel needs nothing from the host and replays from CUDA graphs;
a peer can be at most one call ahead, so a flag is "at least this call", not "equal". The fused form spares
the step one launch per all-reduce and a round trip of the sum through memory (`rms_norm_row` is the norm
kernel's own row code).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, tl_dtype
from trtllm_compile.kernels.norm import normed_dtype, rms_norm_row, weight_row

MAX_ROWS = 256  # one program per row; more would not all be resident at once, and waiting programs need peers
MAX_WORLD = 8
FLAG_BYTES = MAX_ROWS * MAX_WORLD * 4  # int32 flags [MAX_ROWS, MAX_WORLD] at the start of every buffer


@triton.jit
def _buffer(buffers_ptr, rank):
    # Said to be 16-byte aligned (symmetric allocations are; FLAG_BYTES and slot rows keep it), so the row's
    # loads and stores over NVLink are 16 bytes wide: from an integer address Triton can't tell.
    return tl.multiple_of(tl.load(buffers_ptr + rank), 16)


@triton.jit
def _one_shot_kernel(
    x_ptr,
    out_ptr,
    res_ptr,
    sum_ptr,
    w_ptr,
    buffers_ptr,
    counters_ptr,
    N,
    row_stride,
    slot_elems,
    eps,
    RANK: tl.constexpr,
    WORLD: tl.constexpr,
    FLAGS: tl.constexpr,  # FLAG_BYTES and MAX_WORLD, passed in: a kernel reads no module globals
    FLAGS_PER_ROW: tl.constexpr,
    ROUND_TO: tl.constexpr,  # the sum's dtype: x's, or the model's when x holds fp32 partial sums
    NORM: tl.constexpr,
    UNIT_OFFSET: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    dtype = x_ptr.dtype.element_ty
    flag = tl.load(counters_ptr + row) + 1  # this row's call number, the same on every rank
    slot_row = (flag & 1).to(tl.int64) * slot_elems + row * row_stride

    x = tl.load(x_ptr + row * N + cols, mask=mask, other=0.0)
    if NORM:  # in flight while the peers' rows are awaited
        w = weight_row(w_ptr, cols, mask)
    own = _buffer(buffers_ptr, RANK)
    tl.store((own + FLAGS).to(tl.pointer_type(dtype)) + slot_row + cols, x, mask=mask)
    tl.debug_barrier()  # the whole row is stored before one thread's release below publishes it
    for peer in tl.static_range(WORLD):
        if peer != RANK:
            peer_flags = _buffer(buffers_ptr, peer).to(tl.pointer_type(tl.int32))
            tl.atomic_xchg(peer_flags + row * FLAGS_PER_ROW + RANK, flag, sem="release", scope="sys")
    own_flags = own.to(tl.pointer_type(tl.int32)) + row * FLAGS_PER_ROW
    for peer in tl.static_range(WORLD):
        if peer != RANK:
            while tl.atomic_add(own_flags + peer, 0, sem="acquire", scope="sys") - flag < 0:
                pass
    tl.debug_barrier()  # every thread reads the peers' rows only after the acquires above

    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for peer in tl.static_range(WORLD):
        if peer == RANK:
            acc += x.to(tl.float32)
        else:
            slot = (_buffer(buffers_ptr, peer) + FLAGS).to(tl.pointer_type(dtype))
            acc += tl.load(slot + slot_row + cols, mask=mask, other=0.0, cache_modifier=".cg").to(tl.float32)
    reduced = acc.to(ROUND_TO)
    if NORM:
        rms_norm_row(
            reduced.to(tl.float32), w, cols, mask, res_ptr + row * N, sum_ptr + row * N, out_ptr + row * N,
            N, eps, ROUND_TO, True, UNIT_OFFSET,
        )  # fmt: skip
    else:
        tl.store(out_ptr + row * N + cols, reduced, mask=mask)
    tl.store(counters_ptr + row, flag)


INTERPRETED: bool = is_interpreted(_one_shot_kernel)


def _row_stride(row_width: int) -> int:
    return -(-row_width // 16) * 16  # elements: every slot row starts 16-byte aligned


def buffer_bytes(dtype: torch.dtype, row_width: int, max_rows: int) -> int:
    """Bytes of one rank's buffer: the flags, then two slots of max_rows rows of row_width (padded)."""
    return FLAG_BYTES + 2 * max_rows * _row_stride(row_width) * dtype.itemsize


class OneShotRows:
    """This rank's side of the one-shot all-reduce. `buffer_ptrs`: every rank's buffer address (rank order), each
    `buffer_bytes(dtype, row_width, max_rows)` long with its flags zeroed before any rank's first call. Sums
    tensors of `dtype` whose rows (last dim) are at most `row_width` long, up to `max_rows` rows."""

    def __init__(self, buffer_ptrs: list[int], rank: int, dtype: torch.dtype, row_width: int, max_rows: int, device):
        if not 2 <= len(buffer_ptrs) <= MAX_WORLD or not 0 <= rank < len(buffer_ptrs):
            raise ValueError(f"rank {rank} of {len(buffer_ptrs)}: the kernel takes 2 to {MAX_WORLD} ranks")
        if not 0 < max_rows <= MAX_ROWS:
            raise ValueError(f"max_rows must be 1..{MAX_ROWS}, got {max_rows}")
        self.rank, self.world_size, self.dtype = rank, len(buffer_ptrs), dtype
        self.row_width, self.row_stride, self.max_rows = row_width, _row_stride(row_width), max_rows
        self.buffers = torch.tensor(buffer_ptrs, dtype=torch.int64, device=device)
        self.counters = torch.zeros(MAX_ROWS, dtype=torch.int32, device=device)

    def takes(self, x: Tensor) -> bool:
        """Whether `x` fits: contiguous rows of `dtype`, no wider than the slot's, and few enough."""
        if x.dtype != self.dtype or x.dim() == 0 or not x.is_contiguous():
            return False
        width = x.shape[-1]
        return 0 < width <= self.row_width and 0 < x.numel() // width <= self.max_rows

    def all_reduce(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The sum of every rank's `x` (`takes(x)` must hold), rounded to `dtype` (default x's)."""
        out = torch.empty_like(x, dtype=dtype or x.dtype)
        self._launch(x, out, out.dtype)
        return out

    def all_reduce_add_rms_norm(
        self,
        x: Tensor,
        residual: Tensor,
        weight: Tensor,
        eps: float,
        unit_offset: bool = False,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`ops.norm.add_rms_norm(all_reduce(x, dtype), residual, ...)`: (normed, sum + residual)."""
        dtype = dtype or x.dtype
        residual = residual.expand(x.shape).contiguous()
        summed = torch.empty_like(x, dtype=torch.promote_types(dtype, residual.dtype))
        out = torch.empty_like(summed, dtype=normed_dtype(summed.dtype, weight, unit_offset))
        self._launch(x, out, dtype, residual, summed, weight.contiguous(), eps, unit_offset)
        return out, summed

    def _launch(self, x, out, dtype, residual=None, summed=None, weight=None, eps=0.0, unit_offset=False) -> None:
        width = x.shape[-1]
        block_n = triton.next_power_of_2(width)
        norm = weight is not None
        _one_shot_kernel[(x.numel() // width,)](
            x, out, residual if norm else x, summed if norm else out, weight if norm else x,
            self.buffers, self.counters, width, self.row_stride, self.max_rows * self.row_stride, eps,
            RANK=self.rank, WORLD=self.world_size, FLAGS=FLAG_BYTES, FLAGS_PER_ROW=MAX_WORLD,
            ROUND_TO=tl_dtype(dtype), NORM=norm, UNIT_OFFSET=unit_offset,
            BLOCK_N=block_n, num_warps=max(1, min(16, block_n // 512)),
        )  # fmt: skip
