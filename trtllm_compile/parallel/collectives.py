"""Collectives as graph nodes: torch.distributed's functional collectives (`_c10d_functional`), each followed by
its `wait_tensor`. They run eagerly on gloo and NCCL, are capturable in CUDA graphs with NCCL, and stay explicit
nodes a target can lower (the TensorRT target maps them to its distributed-collective layers)."""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import is_op

c10d = torch.ops._c10d_functional

COLLECTIVES = (c10d.all_reduce.default, c10d.all_gather_into_tensor.default)


def insert_all_reduce(graph: torch.fx.Graph, node: torch.fx.Node, group_name: str) -> torch.fx.Node:
    """sum(node) over the group, placed right after `node`; returns the waited result."""
    with graph.inserting_after(node):
        reduced = graph.call_function(c10d.all_reduce.default, (node, "sum", group_name))
    with graph.inserting_after(reduced):
        return graph.call_function(c10d.wait_tensor.default, (reduced,))


def insert_all_gather(graph: torch.fx.Graph, node: torch.fx.Node, world_size: int, group_name: str) -> torch.fx.Node:
    """The ranks' `node` tensors stacked along dim 0 (rank order), placed right after `node`."""
    with graph.inserting_after(node):
        gathered = graph.call_function(c10d.all_gather_into_tensor.default, (node, world_size, group_name))
    with graph.inserting_after(gathered):
        return graph.call_function(c10d.wait_tensor.default, (gathered,))


def collective_nodes(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in gm.graph.nodes if is_op(n, *COLLECTIVES)]
