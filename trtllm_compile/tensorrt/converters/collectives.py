"""What the SHARD pass adds to a rank's graph: torch.distributed's functional collectives as TensorRT
distributed-collective layers (`IDistCollectiveLayer`, NCCL at run time).

- `all_reduce(x, op, group)` -> ALL_REDUCE with the matching reduction (sum, avg, product, min, max);
- `all_gather_into_tensor(x, n, group)` -> ALL_GATHER (both concatenate the ranks' tensors along dim 0, in rank
  order);
- `wait_tensor(x)` -> `x`: TensorRT orders the collective inside the engine, there is nothing to wait for.

The group travels in the graph as a name; its ranks come from the `TensorParallelConfig` the TensorRT export puts
on each collective node (`meta["tensor_parallel_group"]`), else from a live process group of that name. Every
layer gets `num_ranks` = the group size (ALL_GATHER's output shape needs it). Building needs no GPU and no group;
running the engine needs one GPU per rank and an NCCL communicator handed to each rank's execution context.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.tensors import itensor

c10d = torch.ops._c10d_functional

GROUP_META = "tensor_parallel_group"
# c10d's reduce-op names -> TensorRT ReduceOperation names; the bitwise ones and premul_sum have no layer.
_REDUCE_OPS = {"sum": "SUM", "avg": "AVG", "product": "PROD", "min": "MIN", "max": "MAX"}


def group_ranks(node) -> list[int] | None:
    """The ranks of the collective's group: from the export's tag, else from a live process group, else None."""
    tp: TensorParallelConfig | None = node.meta.get(GROUP_META)
    if tp is not None:
        return list(range(tp.world_size))
    if dist.is_available() and dist.is_initialized():
        from torch.distributed.distributed_c10d import _resolve_process_group

        return dist.get_process_group_ranks(_resolve_process_group(node.args[-1]))
    return None


def _unknown_group(node) -> str | None:
    if group_ranks(node) is not None:
        return None
    return (
        f"its process group {node.args[-1]!r} has no known ranks: build with "
        "trtllm_compile.tensorrt.build(..., tensor_parallel=TensorParallelConfig(rank, world_size)), which tags "
        f"the collectives with meta[{GROUP_META!r}], or initialize torch.distributed first"
    )


def _check_all_reduce(node) -> str | None:
    op = str(node.args[1]).lower()
    if op not in _REDUCE_OPS:
        return (
            f"reduce op {op!r} has no TensorRT distributed-collective form (it has {sorted(_REDUCE_OPS)}); "
            "pass partition=True to run this all_reduce in PyTorch between engines"
        )
    return _unknown_group(node)


def _check_all_gather(node) -> str | None:
    reason = _unknown_group(node)
    if reason is None and len(group_ranks(node)) != node.args[1]:
        return f"it gathers {node.args[1]} tensors over a group of {len(group_ranks(node))} ranks"
    return reason


def dist_collective(ctx, x, operation: str, reduce_op: str, ranks: list[int] | None):
    """One IDistCollectiveLayer over `ranks` (root -1: no root-based operation is converted)."""
    if ranks is None:  # a validator refuses these first; reached only by a direct call
        raise NotImplementedError(f"{operation} over a process group with unknown ranks: {_unknown_group(ctx.node)}")
    trt = ctx.trt
    operation_enum = trt.CollectiveOperation.__members__[operation]
    layer = ctx.net.add_dist_collective(
        itensor(ctx, x), operation_enum, trt.ReduceOperation.__members__[reduce_op], -1, ranks
    )
    if layer is None:
        raise RuntimeError(f"TensorRT refused a {operation} collective over ranks {ranks}; its log says why")
    layer.num_ranks = len(ranks)
    return layer.get_output(0)


@converter(c10d.all_reduce.default, validator=_check_all_reduce)
def convert_all_reduce(ctx, node, x, reduce_op, group_name):
    return dist_collective(ctx, x, "ALL_REDUCE", _REDUCE_OPS[str(reduce_op).lower()], group_ranks(node))


@converter(c10d.all_gather_into_tensor.default, validator=_check_all_gather)
def convert_all_gather(ctx, node, x, group_size, group_name):
    return dist_collective(ctx, x, "ALL_GATHER", "NONE", group_ranks(node))


@converter(c10d.wait_tensor.default)
def convert_wait_tensor(ctx, node, x):
    return itensor(ctx, x)
