"""Block accounting of the paged KV cache: allocation, growth, slot mapping, ref-counted forks, errors."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.runtime.kv_cache import (
    BlockManager,
    NoFreeBlocksError,
    blocks_needed,
    kv_cache_bytes_per_block,
    num_blocks_for_memory,
)


@pytest.mark.parametrize(
    ("num_tokens", "block_size", "expected"), [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (16, 16, 1)]
)
def test_blocks_needed(num_tokens: int, block_size: int, expected: int) -> None:
    assert blocks_needed(num_tokens, block_size) == expected


def test_memory_sizing() -> None:
    # K and V, 2 layers, 4 heads of 8, 16 tokens, 2 bytes each.
    assert kv_cache_bytes_per_block(2, 4, 8, 16, torch.float16) == 2 * 2 * 4 * 8 * 16 * 2
    assert kv_cache_bytes_per_block(1, 1, 1, 1, torch.float32) == 8
    assert num_blocks_for_memory(1000, 0.5, 100) == 5
    assert num_blocks_for_memory(1099, 1.0, 100) == 10
    with pytest.raises(ValueError, match="fraction"):
        num_blocks_for_memory(1000, 0.0, 100)
    with pytest.raises(ValueError, match="bytes_per_block"):
        num_blocks_for_memory(1000, 0.5, 0)


def test_allocate_and_free_account_for_every_block() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    assert manager.allocate("a", 5) == [0, 1]
    assert manager.allocate("b", 4) == [2]
    assert (manager.num_used_blocks, manager.num_free_blocks) == (3, 5)
    assert manager.num_tokens("a") == 5 and "a" in manager
    manager.free("a")
    manager.free("b")
    assert (manager.num_used_blocks, manager.num_free_blocks) == (0, 8)
    assert "a" not in manager


def test_allocate_too_many_raises_and_allocates_nothing() -> None:
    manager = BlockManager(num_blocks=3, block_size=4)
    manager.allocate("a", 4)
    assert manager.can_allocate(8) and not manager.can_allocate(9)
    with pytest.raises(NoFreeBlocksError, match="needs 3 more blocks but only 2"):
        manager.allocate("b", 9)
    assert isinstance(NoFreeBlocksError("x"), RuntimeError)
    assert "b" not in manager and manager.num_used_blocks == 1


def test_append_grows_only_when_last_block_fills() -> None:
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.allocate("a", 3)
    assert manager.can_append("a", 1)
    assert manager.append_slots("a", 1) == [3]  # fills block 0
    assert manager.block_table("a") == [0]
    assert manager.append_slots("a", 1) == [4]  # position 4 opens block 1
    assert manager.block_table("a") == [0, 1]
    assert manager.append_slots("a", 6) == [5, 6, 7, 8, 9, 10]
    assert manager.block_table("a") == [0, 1, 2]
    assert manager.num_tokens("a") == 11
    assert manager.can_append("a", 5) and not manager.can_append("a", 6)
    with pytest.raises(NoFreeBlocksError):
        manager.append_slots("a", 6)
    assert manager.num_tokens("a") == 11 and manager.num_used_blocks == 3


def test_slot_mapping_follows_block_table() -> None:
    manager = BlockManager(num_blocks=6, block_size=4)
    manager.allocate("x", 2)  # takes block 0
    manager.allocate("a", 10)  # blocks 1, 2, 3
    manager.free("x")  # block 0 returns to the back of the queue
    manager.append_slots("a", 3)  # position 12 opens block 4
    assert manager.block_table("a") == [1, 2, 3, 4]
    assert manager.slot_mapping("a", 0, 13) == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    assert manager.slot_mapping("a", 11, 13) == [15, 16]
    assert manager.slot_mapping("a", 5, 5) == []
    with pytest.raises(ValueError, match="outside"):
        manager.slot_mapping("a", 0, 14)


def test_fork_shares_full_blocks_and_copies_partial_one() -> None:
    manager = BlockManager(num_blocks=8, block_size=4)
    manager.allocate("parent", 10)  # blocks 0, 1 full; block 2 holds 2 tokens
    copies = manager.fork("parent", "child")
    assert copies == [(2, 3)]
    assert manager.block_table("child") == [0, 1, 3]
    assert manager.num_tokens("child") == 10
    assert manager.num_used_blocks == 4
    # The two sequences now diverge in their own last blocks.
    assert manager.append_slots("parent", 1) == [2 * 4 + 2]
    assert manager.append_slots("child", 1) == [3 * 4 + 2]
    # Shared blocks stay alive until their last user frees them.
    manager.free("parent")
    assert manager.num_used_blocks == 3
    assert manager.block_table("child") == [0, 1, 3]
    manager.free("child")
    assert manager.num_used_blocks == 0


def test_fork_at_block_boundary_shares_everything() -> None:
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.allocate("p", 8)
    assert manager.fork("p", "c1") == []
    assert manager.fork("c1", "c2") == []
    assert manager.num_used_blocks == 2
    manager.append_slots("c2", 1)  # a fresh block: shared blocks are never written
    assert manager.block_table("c2") == [0, 1, 2]
    for seq_id in ("p", "c2", "c1"):
        manager.free(seq_id)
    assert manager.num_used_blocks == 0


def test_fork_without_room_for_partial_block_raises() -> None:
    manager = BlockManager(num_blocks=2, block_size=4)
    manager.allocate("p", 6)
    with pytest.raises(NoFreeBlocksError):
        manager.fork("p", "c")
    assert "c" not in manager
    manager.free("p")
    assert manager.num_used_blocks == 0


def test_misuse_raises_clear_errors() -> None:
    manager = BlockManager(num_blocks=4, block_size=4)
    manager.allocate("a", 1)
    with pytest.raises(ValueError, match="already has blocks"):
        manager.allocate("a", 1)
    with pytest.raises(ValueError, match="already has blocks"):
        manager.fork("a", "a")
    manager.free("a")
    with pytest.raises(KeyError, match="already freed"):
        manager.free("a")
    with pytest.raises(KeyError, match="no blocks"):
        manager.append_slots("missing", 1)
    with pytest.raises(ValueError, match="num_blocks"):
        BlockManager(num_blocks=0, block_size=4)
