"""Which shard of the model one rank computes: the rank, the world size, and the split arithmetic.

Heads are split by whole GQA groups, so every rank's query heads share its KV heads exactly as in the full
model; a count that does not divide the ranks is split unevenly (ranks differ by one group) rather than padded,
because a padded head costs every rank the same time as the largest uneven share and holds memory besides.
With fewer KV heads than ranks, each KV head is replicated on the ranks that share its query heads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorParallelConfig:
    """rank / world_size: this process's place in the tensor-parallel group. group_name: the torch.distributed
    process group the graph's collectives run on (`dist.group.WORLD.group_name` once initialized); it travels
    in the graph as a literal, so one compiled graph belongs to one rank of one group."""

    rank: int = 0
    world_size: int = 1
    group_name: str = "0"

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} is outside a tensor-parallel group of {self.world_size}")


def balanced_range(total: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of part `index` when `total` items are cut into `parts` contiguous runs differing by <= 1."""
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


@dataclass(frozen=True)
class HeadShard:
    """The query heads [q_start, q_end) and KV heads [kv_start, kv_end) one rank computes."""

    q_start: int
    q_end: int
    kv_start: int
    kv_end: int

    @property
    def num_heads(self) -> int:
        return self.q_end - self.q_start

    @property
    def num_kv_heads(self) -> int:
        return self.kv_end - self.kv_start


def shard_heads(num_heads: int, num_kv_heads: int, world_size: int, rank: int) -> HeadShard:
    """GQA-aware head split (see the module docstring); raises when a rank would get no query head."""
    if num_heads % num_kv_heads:
        raise ValueError(f"{num_heads} query heads do not form groups over {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    if num_kv_heads >= world_size:
        kv_start, kv_end = balanced_range(num_kv_heads, world_size, rank)
        return HeadShard(kv_start * group, kv_end * group, kv_start, kv_end)
    if world_size % num_kv_heads or group < world_size // num_kv_heads:
        raise ValueError(
            f"cannot split {num_heads} query heads / {num_kv_heads} KV heads over {world_size} ranks: with fewer "
            "KV heads than ranks, the ranks must divide evenly among the KV heads and each rank needs a query "
            f"head; use a tensor-parallel size that is a multiple of {num_kv_heads} and at most {num_heads}"
        )
    ranks_per_kv = world_size // num_kv_heads
    kv = rank // ranks_per_kv
    q_start, q_end = balanced_range(group, ranks_per_kv, rank % ranks_per_kv)
    return HeadShard(kv * group + q_start, kv * group + q_end, kv, kv + 1)


@dataclass(frozen=True)
class VocabShard:
    """Rows [start, end) of the vocabulary, padded to `padded` rows so every rank's logits gather evenly."""

    start: int
    end: int
    padded: int


def shard_vocab(vocab_size: int, world_size: int, rank: int) -> VocabShard:
    padded = -(-vocab_size // world_size)
    start = min(rank * padded, vocab_size)
    return VocabShard(start, min(start + padded, vocab_size), padded)
