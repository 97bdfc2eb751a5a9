"""Shared set-up of the tensor-parallel tests: run every rank's step graph in one process, with the collectives
emulated by threads (each all-reduce sums the ranks' partials in rank order), and build step inputs by hand."""

from __future__ import annotations

import threading

import torch
import torch.fx

from trtllm_compile.fx_utils import is_op
from trtllm_compile.parallel.collectives import c10d


class ThreadGroup:
    """Collectives between `world_size` threads: each rank deposits its tensor, all read the combination."""

    def __init__(self, world_size: int):
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list[torch.Tensor | None] = [None] * world_size

    def _exchange(self, rank: int, tensor: torch.Tensor, combine) -> torch.Tensor:
        self.slots[rank] = tensor
        self.barrier.wait()
        out = combine(self.slots)
        self.barrier.wait()  # nobody overwrites a slot before every rank has read them all
        return out

    def all_reduce(self, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        return self._exchange(rank, tensor, lambda slots: sum(slots[1:], slots[0].clone()))

    def all_gather(self, tensor: torch.Tensor, rank: int) -> torch.Tensor:
        return self._exchange(rank, tensor, lambda slots: torch.cat(slots, dim=0))


def emulate_collectives(gm: torch.fx.GraphModule, group: ThreadGroup, rank: int) -> None:
    """Point the graph's functional collectives at `group` (rank `rank`); `wait_tensor` becomes a no-op."""
    for node in list(gm.graph.nodes):
        if is_op(node, c10d.wait_tensor.default):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif is_op(node, c10d.all_reduce.default):
            node.target, node.args = group.all_reduce, (node.args[0], rank)
        elif is_op(node, c10d.all_gather_into_tensor.default):
            node.target, node.args = group.all_gather, (node.args[0], rank)
    gm.recompile()


def run_ranks(calls: list) -> list:
    """Run one zero-argument callable per rank in its own thread; their results, in rank order."""
    results, errors = [None] * len(calls), []

    def run(rank: int) -> None:
        try:
            results[rank] = calls[rank]()
        except BaseException as error:  # surfaced below, with the rank
            errors.append((rank, error))

    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        rank, error = errors[0]
        raise RuntimeError(f"rank {rank} failed") from error
    return results


def step_inputs(sequences: list[tuple[list[int], int]], kv_cache: torch.Tensor, block_size: int) -> list:
    """The step graph's inputs for `sequences` of (new token ids, position of the first): sequence n owns the
    blocks n * blocks_per_seq ..., as ModelRunner lays them out."""
    blocks_per_seq = kv_cache.shape[2] // len(sequences)
    ids, positions, slots, tables, context_lens, starts = [], [], [], [], [], [0]
    for n, (tokens, start) in enumerate(sequences):
        table = list(range(n * blocks_per_seq, (n + 1) * blocks_per_seq))
        ids += tokens
        positions += range(start, start + len(tokens))
        slots += [table[p // block_size] * block_size + p % block_size for p in range(start, start + len(tokens))]
        tables.append(table)
        context_lens.append(start + len(tokens))
        starts.append(starts[-1] + len(tokens))
    return [
        torch.tensor([ids]),
        torch.tensor([positions]),
        kv_cache,
        torch.tensor(slots),
        torch.tensor(tables, dtype=torch.int32),
        torch.tensor(context_lens, dtype=torch.int32),
        torch.tensor(starts, dtype=torch.int32),
        torch.tensor(starts[1:]) - 1,
    ]
