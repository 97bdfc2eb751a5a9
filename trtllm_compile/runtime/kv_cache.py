"""Block bookkeeping for a paged KV cache: which fixed-size blocks hold which sequence's tokens.

Only indices live here; the cache tensors belong to the model runner. Token position `p` of a sequence is
stored at flat slot `block_table[p // block_size] * block_size + p % block_size`.

Forks share whole blocks by reference count. Only *full* blocks are ever shared, and tokens are only ever
appended after the last one, so a shared block is never written and no copy-on-write is needed: `fork`
gives the child a fresh block for the parent's partial last block and returns the (src, dst) block pairs
the runner must copy.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Hashable

import torch

logger = logging.getLogger(__name__)

SeqId = Hashable


CPU_KV_CACHE_FRACTION = 0.25  # of the host's available memory: weights and activations share the rest
# and at most this much: the cache is zeroed when made, and 5 GiB took 7 s of the first generate() on a 2-core host
CPU_KV_CACHE_MAX_BYTES = 1 << 30


def available_host_memory() -> int | None:
    """Bytes of host memory available now (None where the OS does not say)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class NoFreeBlocksError(RuntimeError):
    """The cache has too few free blocks for the request; nothing was allocated."""


def blocks_needed(num_tokens: int, block_size: int) -> int:
    """How many blocks of `block_size` tokens hold `num_tokens` tokens."""
    if num_tokens < 0 or block_size < 1:
        raise ValueError(f"need num_tokens >= 0 and block_size >= 1, got {num_tokens} and {block_size}")
    return -(-num_tokens // block_size)


def kv_cache_bytes_per_block(
    num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
) -> int:
    """Bytes one block takes across all layers, keys and values together."""
    return 2 * num_layers * num_kv_heads * head_dim * block_size * dtype.itemsize


def num_blocks_for_memory(free_bytes: int, fraction: float, bytes_per_block: int) -> int:
    """How many blocks fit in `fraction` of `free_bytes`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if bytes_per_block < 1:
        raise ValueError(f"bytes_per_block must be >= 1, got {bytes_per_block}")
    return max(int(free_bytes * fraction), 0) // bytes_per_block


class BlockManager:
    """Hands out blocks to sequences and tracks how many tokens each sequence holds."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        # FIFO reuse spreads writes over the cache, which makes stale-slot bugs show up in tests.
        self._free_blocks: deque[int] = deque(range(num_blocks))
        self._ref_counts = [0] * num_blocks
        self._tables: dict[SeqId, list[int]] = {}
        self._num_tokens: dict[SeqId, int] = {}

    @property
    def num_free_blocks(self) -> int:
        return len(self._free_blocks)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self._free_blocks)

    def __contains__(self, seq_id: SeqId) -> bool:
        return seq_id in self._tables

    def num_tokens(self, seq_id: SeqId) -> int:
        return self._num_tokens[self._checked(seq_id)]

    def block_table(self, seq_id: SeqId) -> list[int]:
        """A copy of the sequence's block ids, in token order."""
        return list(self._tables[self._checked(seq_id)])

    def can_allocate(self, num_tokens: int) -> bool:
        return blocks_needed(num_tokens, self.block_size) <= self.num_free_blocks

    def allocate(self, seq_id: SeqId, num_tokens: int) -> list[int]:
        """Give a new sequence blocks for its first `num_tokens` tokens; returns its block table."""
        if seq_id in self._tables:
            raise ValueError(f"sequence {seq_id!r} already has blocks; free it first")
        self._tables[seq_id] = self._take_blocks(blocks_needed(num_tokens, self.block_size), seq_id)
        self._num_tokens[seq_id] = num_tokens
        return self.block_table(seq_id)

    def can_append(self, seq_id: SeqId, num_new_tokens: int = 1) -> bool:
        return self._extra_blocks(seq_id, num_new_tokens) <= self.num_free_blocks

    def append_slots(self, seq_id: SeqId, num_new_tokens: int = 1) -> list[int]:
        """Grow the sequence by `num_new_tokens` tokens; returns the slots those tokens go to."""
        extra = self._extra_blocks(seq_id, num_new_tokens)
        self._tables[seq_id] += self._take_blocks(extra, seq_id)
        start = self._num_tokens[seq_id]
        self._num_tokens[seq_id] = start + num_new_tokens
        return self.slot_mapping(seq_id, start, start + num_new_tokens)

    def slot_mapping(self, seq_id: SeqId, start: int, end: int) -> list[int]:
        """Flat cache slots of token positions start..end-1."""
        table, size = self._tables[self._checked(seq_id)], self.block_size
        num_tokens = self._num_tokens[seq_id]
        if not 0 <= start <= end <= num_tokens:
            raise ValueError(f"positions [{start}, {end}) lie outside {seq_id!r} of {num_tokens} tokens")
        return [table[pos // size] * size + pos % size for pos in range(start, end)]

    def fork(self, parent_id: SeqId, child_id: SeqId) -> list[tuple[int, int]]:
        """Give `child_id` the parent's tokens: full blocks are shared, a partial last block is copied.

        Returns the (src_block, dst_block) pairs whose cache contents the caller must copy.
        """
        parent_table = self._tables[self._checked(parent_id)]
        if child_id in self._tables:
            raise ValueError(f"sequence {child_id!r} already has blocks; free it first")
        num_tokens = self._num_tokens[parent_id]
        num_full = num_tokens // self.block_size
        fresh = self._take_blocks(len(parent_table) - num_full, child_id)
        for block in parent_table[:num_full]:
            self._ref_counts[block] += 1
        self._tables[child_id] = parent_table[:num_full] + fresh
        self._num_tokens[child_id] = num_tokens
        return list(zip(parent_table[num_full:], fresh, strict=True))

    def free(self, seq_id: SeqId) -> None:
        """Release the sequence's blocks; a shared block returns to the pool when its last user frees it."""
        for block in self._tables.pop(self._checked(seq_id)):
            self._ref_counts[block] -= 1
            if self._ref_counts[block] == 0:
                self._free_blocks.append(block)
        del self._num_tokens[seq_id]

    def _checked(self, seq_id: SeqId) -> SeqId:
        if seq_id not in self._tables:
            raise KeyError(f"sequence {seq_id!r} has no blocks (never allocated, or already freed)")
        return seq_id

    def _extra_blocks(self, seq_id: SeqId, num_new_tokens: int) -> int:
        if num_new_tokens < 0:
            raise ValueError(f"num_new_tokens must be >= 0, got {num_new_tokens}")
        total = self._num_tokens[self._checked(seq_id)] + num_new_tokens
        return blocks_needed(total, self.block_size) - len(self._tables[seq_id])

    def _take_blocks(self, count: int, seq_id: SeqId) -> list[int]:
        if count > len(self._free_blocks):
            raise NoFreeBlocksError(
                f"sequence {seq_id!r} needs {count} more blocks but only {len(self._free_blocks)} of "
                f"{self.num_blocks} are free; free finished sequences or give the cache more memory"
            )
        blocks = [self._free_blocks.popleft() for _ in range(count)]
        for block in blocks:
            self._ref_counts[block] = 1
        return blocks
