"""All-reduces of small messages over peer memory, for the decode steps of tensor parallelism.

At a decode step's sizes (batch x hidden values: a few KB to a few hundred KB) NCCL's all-reduce is bound by
latency, and a step makes two per layer. torch's symmetric memory maps one buffer of every rank into every
rank's address space; our one-shot kernel (`kernels/all_reduce.py`) sums through it in one launch with one
barrier, and where the all-reduce feeds the residual add + RMSNorm of the next sublayer (every one but the
embedding's) the norm runs in the same kernel. TensorRT-LLM and vLLM use the same scheme (their own CUDA
kernels) for small messages.

It needs GPUs with peer access (NVLink) and a floating-point dtype. Larger messages (prefills) keep NCCL; the
runner says which path the graph's all-reduces took, and TRTLLM_PEER_ALL_REDUCE=0 keeps them all on NCCL.
NVLink multicast is not used (`TORCH_SYMM_MEM_DISABLE_MULTICAST=1`, set by `launch`).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.fx
from torch import Tensor

from trtllm_compile.fx_utils import aten, is_op, val
from trtllm_compile.kernels import CUDA_KERNELS
from trtllm_compile.parallel.collectives import c10d

# The largest message the one-shot kernel takes (bytes). It runs one program per row, each waiting on its own
# flags: on two H100s it beats NCCL up to 32 rows of 4096 bf16 (256 KiB: 12.3 against 13.2 us, fused with the
# norm 13.0 against 15.4) and loses from 64 (benchmarks/all_reduce.py, docs/benchmarks.md run 17).
ONE_SHOT_MAX_BYTES = 256 << 10
PEER_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
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
        kernel_dtypes = ", ".join(map(str, PEER_DTYPES))
        return f"the one-shot kernel sums one of {kernel_dtypes}, the graph {sorted(map(str, dtypes))}"
    if len(set(made_by_rank)) > 1:
        return (
            "this process set up peer memory for an earlier tensor-parallel group and torch keeps that per "
            "process, so fresh workers can't join it again (start a new process for peer all-reduces)"
        )
    return None


class PeerAllReduce:
    """Sum over the ranks of process group `group_name`, through a symmetric buffer for tensors of `dtype` with
    rows (last dim) up to `row_width` and up to `max_bytes`; NCCL for the rest. Constructing it is collective
    (every rank of the group, in the same order)."""

    def __init__(
        self,
        group_name: str,
        device: torch.device,
        dtype: torch.dtype,
        row_width: int,
        max_bytes: int = ONE_SHOT_MAX_BYTES,
    ):
        from torch.distributed import _symmetric_memory as symm_mem

        from trtllm_compile.kernels import all_reduce, norm  # triton: imported where a GPU runs them

        if dtype not in PEER_DTYPES:
            raise ValueError(f"the one-shot all-reduce takes {PEER_DTYPES}, not {dtype}")
        max_rows = min(all_reduce.MAX_ROWS, max_bytes // (row_width * dtype.itemsize))
        if max_rows == 0:
            raise ValueError(f"rows of {row_width} {dtype} exceed max_bytes={max_bytes}")
        self.group_name, self._add_rms_norm = group_name, norm.add_rms_norm
        nbytes = all_reduce.buffer_bytes(dtype, row_width, max_rows)
        self.buffer = symm_mem.empty(nbytes, dtype=torch.uint8, device=device)
        self.buffer[: all_reduce.FLAG_BYTES].zero_()
        handle = symm_mem.rendezvous(self.buffer, group_name)
        offset = self.buffer.data_ptr() - handle.buffer_ptrs[handle.rank]  # the same in every rank's allocation
        ptrs = [p + offset for p in handle.buffer_ptrs]
        self.rows = all_reduce.OneShotRows(ptrs, handle.rank, dtype, row_width, max_rows, device)
        handle.barrier()  # no rank raises a flag before every rank has zeroed its own
        torch.cuda.synchronize(device)
        global _rendezvous_made
        _rendezvous_made += 1

    def takes(self, x: Tensor) -> bool:
        return self.rows.takes(x)

    def all_reduce(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The sum of every rank's `x`, rounded to `dtype` (default x's: see passes/widen_partial_sums.py)."""
        if self.rows.takes(x):
            return self.rows.all_reduce(x, dtype)
        summed = c10d.wait_tensor(c10d.all_reduce(x, "sum", self.group_name))
        return summed if dtype is None else summed.to(dtype)

    def all_reduce_add_rms_norm(
        self,
        x: Tensor,
        residual: Tensor,
        weight: Tensor,
        eps: float,
        unit_offset: bool = False,
        dtype: torch.dtype | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`add_rms_norm(all_reduce(x, dtype), residual, weight, eps, unit_offset)`, in one kernel where it fits."""
        if self.rows.takes(x):
            return self.rows.all_reduce_add_rms_norm(x, residual, weight, eps, unit_offset, dtype)
        return self._add_rms_norm(self.all_reduce(x, dtype), residual, weight, eps, unit_offset)


def all_reduce_dtypes(gm: torch.fx.GraphModule) -> set[torch.dtype]:
    """The dtypes the graph's all-reduces sum (as traced)."""
    return {val(n.args[0]).dtype for n in gm.graph.nodes if is_op(n, c10d.all_reduce.default)}


def all_reduce_row_width(gm: torch.fx.GraphModule) -> int:
    """The longest last dim the graph's all-reduces sum (the hidden size, in a decoder)."""
    return max(val(n.args[0]).shape[-1] for n in gm.graph.nodes if is_op(n, c10d.all_reduce.default))


class BoundAllReduces(NamedTuple):
    bound: int  # all-reduces pointed at the reducer
    fused: int  # of them, those that took the residual add + RMSNorm after them into the same call


def _rounding(node: torch.fx.Node) -> torch.fx.Node | None:
    """The cast to the model's dtype that follows a widened all-reduce (passes/widen_partial_sums.py), if any."""
    (user, *others) = node.users
    if not others and is_op(user, aten._to_copy.default) and set(user.kwargs) == {"dtype"}:
        return user
    return None


def bind_peer_all_reduce(gm: torch.fx.GraphModule, reducer: PeerAllReduce, fuse_norm: bool = True) -> BoundAllReduces:
    """Point the graph's sum all-reduces over the reducer's group (each an all_reduce, its wait_tensor and the
    cast that rounds a widened sum) at `reducer.all_reduce`, or, with `fuse_norm` where the sum's one use is an
    add_rms_norm, that norm at `reducer.all_reduce_add_rms_norm`."""
    add_rms_norms = {torch.ops.trtllm.add_rms_norm.default, CUDA_KERNELS.get("trtllm::add_rms_norm")}
    bound = fused = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, c10d.all_reduce.default) or node.args[1:] != ("sum", reducer.group_name):
            continue
        for wait in [user for user in node.users if is_op(user, c10d.wait_tensor.default)]:
            wait.replace_all_uses_with(node)
            gm.graph.erase_node(wait)
        bound += 1
        partial, cast = node.args[0], _rounding(node)
        rounded = {"dtype": cast.kwargs["dtype"]} if cast is not None else {}
        result = cast or node  # the node whose users take the sum
        (user, *others) = result.users
        if fuse_norm and not others and user.target in add_rms_norms and user.args[:2].count(result) == 1:
            residual = user.args[1] if user.args[0] is result else user.args[0]  # x + residual is symmetric
            user.target, user.args = reducer.all_reduce_add_rms_norm, (partial, residual, *user.args[2:])
            user.kwargs = {**user.kwargs, **rounded}
            fused += 1
        else:
            reduced = gm.graph.call_function(reducer.all_reduce, (partial,), rounded)
            result.replace_all_uses_with(reduced)
            result.append(reduced)
        for dead in (cast, node):
            if dead is not None:
                gm.graph.erase_node(dead)
    gm.recompile()
    return BoundAllReduces(bound, fused)
