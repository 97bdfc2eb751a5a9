"""All-reduces of small messages over peer memory, for the decode steps of tensor parallelism.

At a decode step's sizes (batch x hidden values: a few KB to a few hundred KB) NCCL's all-reduce is bound by
latency, and a step makes two per layer. torch's symmetric memory maps one buffer of every rank into every
rank's address space, and its one-shot all-reduce is a single kernel: copy this rank's values into its own
slot, wait for the peers' signals, read every slot and sum them in rank order (so every rank gets the same
bits), then signal again before the slot may be reused. TensorRT-LLM and vLLM use the same scheme (their own
kernels) for small messages.

It needs GPUs with peer access (NVLink) and float32 or bfloat16 values. Larger messages (prefills) and other
dtypes keep NCCL; the runner says which path the graph's all-reduces took, and TRTLLM_PEER_ALL_REDUCE=0 keeps
them all on NCCL. NVLink multicast is not used (`TORCH_SYMM_MEM_DISABLE_MULTICAST=1`, set by `launch`).
"""

from __future__ import annotations

import os

import torch
import torch.fx
from torch import Tensor

from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.parallel.collectives import c10d

# The largest message the one-shot kernel takes (bytes). On two H100s it beats NCCL up to 2 MiB and loses from
# 4 MiB (benchmarks/all_reduce.py, docs/benchmarks.md run 11); the end-to-end runs were made with 1 MiB.
ONE_SHOT_MAX_BYTES = 1 << 20
PEER_DTYPES = (torch.float32, torch.bfloat16)  # what torch's one-shot kernel is built for
_rendezvous_made = 0  # symmetric buffers this process has set up (see `rendezvous_made`)


def rendezvous_made() -> int:
    """How many PeerAllReduce this process has made. torch's symmetric memory keeps state per process group name
    for the life of a process (rank maps, exchange counters), and a process group made after another was destroyed
    gets its name back: ranks can rendezvous only if they share that history (all fresh processes, or processes
    that made the same groups before). The runner compares this count across ranks first."""
    return _rendezvous_made


def why_nccl(dtypes: set[torch.dtype], made_by_rank: list[int]) -> str | None:
    """Why a graph's all-reduces must all stay on NCCL, or None when the peer path may be set up. `dtypes`: what
    the graph's all-reduces sum; `made_by_rank`: every rank's `rendezvous_made()`."""
    if os.environ.get("TRTLLM_PEER_ALL_REDUCE", "1") == "0":
        return "TRTLLM_PEER_ALL_REDUCE=0"
    if len(dtypes) != 1 or not dtypes <= set(PEER_DTYPES):
        return f"the one-shot kernel sums {' or '.join(map(str, PEER_DTYPES))}, the graph {sorted(map(str, dtypes))}"
    if len(set(made_by_rank)) > 1:
        return (
            "this process set up peer memory for an earlier tensor-parallel group and torch keeps that per "
            "process, so fresh workers can't join it again (start a new process for peer all-reduces)"
        )
    return None


class PeerAllReduce:
    """Sum over the ranks of process group `group_name` through a symmetric buffer of `max_bytes`; NCCL for what
    it can't take. Constructing it is collective (every rank of the group, in the same order)."""

    def __init__(self, group_name: str, device: torch.device, dtype: torch.dtype, max_bytes: int = ONE_SHOT_MAX_BYTES):
        from torch.distributed import _symmetric_memory as symm_mem

        if dtype not in PEER_DTYPES:
            raise ValueError(f"the one-shot all-reduce takes {PEER_DTYPES}, not {dtype}")
        self.group_name, self.dtype = group_name, dtype
        self.buffer = symm_mem.empty(max_bytes // dtype.itemsize, dtype=dtype, device=device)
        symm_mem.rendezvous(self.buffer, group_name)
        global _rendezvous_made
        _rendezvous_made += 1

    def takes(self, x: Tensor) -> bool:
        """Whether `x` goes through peer memory. The kernel's vector width follows the byte offset and size
        of its input, which must match the buffer's: a fresh tensor of whole 4-byte words."""
        return (
            x.dtype == self.dtype
            and x.is_contiguous()
            and x.storage_offset() == 0
            and x.numel() <= self.buffer.numel()
            and x.numel() * x.element_size() % 4 == 0
        )

    def all_reduce(self, x: Tensor) -> Tensor:
        if not self.takes(x):
            return c10d.wait_tensor(c10d.all_reduce(x, "sum", self.group_name))
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(
            self.buffer[: x.numel()], x.view(-1), "sum", self.group_name, out.view(-1)
        )
        return out


def all_reduce_dtypes(gm: torch.fx.GraphModule) -> set[torch.dtype]:
    """The dtypes the graph's all-reduces sum (as traced)."""
    return {val(n.args[0]).dtype for n in gm.graph.nodes if is_op(n, c10d.all_reduce.default)}


def bind_peer_all_reduce(gm: torch.fx.GraphModule, reducer: PeerAllReduce) -> int:
    """Point the graph's sum all-reduces over the reducer's group (each an all_reduce and its wait_tensor) at
    `reducer.all_reduce`. Returns how many were bound."""
    bound = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, c10d.all_reduce.default) or node.args[1:] != ("sum", reducer.group_name):
            continue
        for wait in [user for user in node.users if is_op(user, c10d.wait_tensor.default)]:
            wait.replace_all_uses_with(node)
            gm.graph.erase_node(wait)
        node.target, node.args = reducer.all_reduce, (node.args[0],)
        bound += 1
    gm.recompile()
    return bound
