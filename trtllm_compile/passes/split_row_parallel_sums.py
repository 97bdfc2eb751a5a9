"""One GPU sums its row-parallel GEMMs the way `config.tp_invariant` ranks do, for bit-identical outputs.

Sharded over N ranks, the attention-out and MLP-down GEMMs each sum 1/N of K per rank, in fp32, and the
all-reduce adds those partial sums in rank order (passes/widen_partial_sums.py); one GPU sums all of K in one
accumulation. The two differ in their last fp32 bits, so bf16 outputs and, on flat logits, greedy tokens part.
With `tp_invariant=N` the single-GPU graph computes the same N partial sums, over the same input columns
(`shard_tensor_parallel.plan_block` says which), and adds them in the same order:

  trtllm.linear(x, W) [+ b]
    =>  trtllm.linear(x[..., K0], W[:, K0], out_dtype=float32) + trtllm.linear(x[..., K1], W[:, K1], ...) [+ b]
        -> to(x.dtype)

The weight slices are views of W (no copy). The rest of the invariance lives in the kernels: under the
runner's `kernels.fixed_plans()` every GEMM and attention kernel picks its plan from the row count alone, never
from N (which sharding changes) or from timing, and N ranks' all-reduces keep their norms apart
(`bind_peer_all_reduce(fuse_norm=False)`). Two ranks' all-reduce adds two values, in either order the same; at
more ranks NCCL's ring orders the additions by position, so only N = 2 is offered.

A LOWER pass, after lower_linear: it splits `trtllm.linear` (fp16 / bf16 weights); a block it cannot split
gets a warning naming why (its outputs are then not invariant), and the compile report counts the blocks split.
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from trtllm_compile.fx_utils import add_constant, aten, constant_of, is_op, val
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.rewrites import NotShardable, refresh_values
from trtllm_compile.passes.registry import Stage, register_pass
from trtllm_compile.passes.shard_tensor_parallel import plan_block

logger = logging.getLogger(__name__)

INVARIANT_TP_SIZES = (2,)  # see the module docstring: exact where an all-reduce adds two values


def check_tp_invariant(tp_invariant: int, world_size: int) -> None:
    """Raise unless a compile for `world_size` ranks can reproduce the outputs of `tp_invariant` ranks."""
    if tp_invariant not in (0, *INVARIANT_TP_SIZES):
        raise ValueError(
            f"tp_invariant={tp_invariant}: bit-identical outputs across tensor-parallel sizes are offered for "
            f"tp_invariant in {INVARIANT_TP_SIZES} (0: off); NCCL's ring orders the sums of more ranks by position"
        )
    if tp_invariant and world_size not in (1, tp_invariant):
        raise ValueError(
            f"tp_invariant={tp_invariant} reproduces tensor_parallel_size 1 and {tp_invariant}, not {world_size}"
        )


def _split(gm: torch.fx.GraphModule, gemm: torch.fx.Node, keeps: list[tuple[int, int]]) -> None:
    x, weight_node, bias = gemm.args[0], gemm.args[1], gemm.args[2] if len(gemm.args) > 2 else None
    weight = constant_of(gm, weight_node)
    graph = gm.graph
    total = None
    with graph.inserting_before(gemm):
        for rank, (start, end) in enumerate(keeps):
            columns = graph.call_function(aten.slice.Tensor, (x, -1, start, end))
            piece = graph.get_attr(add_constant(gm, weight[:, start:end], f"{weight_node.target}_rank{rank}"))
            partial = graph.call_function(
                torch.ops.trtllm.linear.default, (columns, piece, None), {"out_dtype": torch.float32}
            )
            total = partial if total is None else graph.call_function(aten.add.Tensor, (total, partial))
        if bias is not None:  # the sharded graph adds it once, to the fp32 sum
            total = graph.call_function(aten.add.Tensor, (total, bias))
        rounded = graph.call_function(aten._to_copy.default, (total,), {"dtype": val(gemm).dtype})
    gemm.replace_all_uses_with(rounded)
    graph.erase_node(gemm)
    if not weight_node.users:
        graph.erase_node(weight_node)


@register_pass(Stage.LOWER)
def split_row_parallel_sums(gm: torch.fx.GraphModule, config) -> int:
    """With `tp_invariant=N` on one GPU: row-parallel GEMMs as N fp32 partial sums over the ranks' columns."""
    reference = getattr(config, "tp_invariant", 0)
    tp: TensorParallelConfig | None = getattr(config, "tensor_parallel", None)
    world_size = tp.world_size if tp is not None else 1
    check_tp_invariant(reference, world_size)
    if not reference or world_size != 1:
        return 0  # off, or the shard pass split the GEMMs across real ranks
    split, left = 0, []
    for node in list(gm.graph.nodes):
        try:
            block = plan_block(node, TensorParallelConfig(0, reference))
        except NotShardable as reason:
            left.append(f"{node.name}: {reason}")
            continue
        if block is None:
            continue
        if not is_op(block.row, torch.ops.trtllm.linear.default):
            left.append(f"{node.name}: its row-parallel GEMM is {block.row.target}, not a half-precision trtllm.linear")
            continue
        _split(gm, block.row, block.row_keeps)
        split += 1
    for line in left:
        logger.warning("tp_invariant=%d: not split, so not invariant: %s", reference, line)
    if split:
        gm.graph.lint()
        refresh_values(gm)
        gm.recompile()
    return split
