"""Partitioning (`partition=True`): nodes without a converter stay in PyTorch, the rest become separate engines.

The graph is split with torch's capability-based partitioner into `trt_<i>` submodules (each one engine) and the
unconvertible nodes left between them. Sizes (`sym_size`) are duplicated per user first, so every engine computes
the sizes it needs from its own tensors instead of taking SymInts across an engine boundary.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
from torch.fx.passes.infra.partitioner import CapabilityBasedPartitioner
from torch.fx.passes.operator_support import OperatorSupportBase

from trtllm_compile.fx_utils import aten, is_op
from trtllm_compile.tensorrt.converters.registry import find_converter, target_name
from trtllm_compile.tensorrt.impl.context import FrozenTensor


@dataclass(frozen=True)
class TorchNode:
    """A node that runs in PyTorch between engines, and why."""

    name: str
    op: str
    reason: str


@dataclass
class Piece:
    """One engine's subgraph: `constants` are its placeholders that the parent feeds from frozen weights."""

    name: str
    graph_module: torch.fx.GraphModule
    constants: dict[str, FrozenTensor]


@dataclass
class PartitionedGraph:
    parent: torch.fx.GraphModule  # calls the pieces (as submodules) and runs the torch nodes
    pieces: list[Piece]
    torch_nodes: list[TorchNode]


class _Support(OperatorSupportBase):
    def __init__(self, unsupported: set[torch.fx.Node]):
        self.unsupported = unsupported

    def is_node_supported(self, submodules, node: torch.fx.Node) -> bool:
        return node.op == "call_function" and node not in self.unsupported


def _unsupported(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, str]:
    found = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        spec, reason = find_converter(node)
        if spec is None:
            found[node] = reason
    # Sizes feeding only PyTorch nodes are computed there (an engine cannot output a SymInt), and a tuple's items
    # are taken where the tuple is made (an engine outputs tensors, not tuples).
    for node in reversed(gm.graph.nodes):
        if is_op(node, aten.sym_size.int) and node.users and all(u in found for u in node.users):
            found[node] = "a size computed for PyTorch nodes"
    for node in gm.graph.nodes:
        if is_op(node, operator.getitem) and node.args[0] in found:
            found[node] = "an item of a PyTorch node's result"
    return found


def _duplicate_sizes(gm: torch.fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if not is_op(node, aten.sym_size.int) or len(node.users) < 2:
            continue
        for user in list(node.users)[1:]:
            with gm.graph.inserting_before(user):
                copy = gm.graph.call_function(node.target, node.args)
            copy.meta = dict(node.meta)
            user.replace_input_with(node, copy)
    gm.recompile()


def partition(gm: torch.fx.GraphModule) -> PartitionedGraph:
    """Split `gm` into engine pieces and PyTorch nodes (a copy: `gm` is left as it is)."""
    gm = torch.fx.GraphModule(gm, gm.graph.__deepcopy__())
    _duplicate_sizes(gm)
    unsupported = _unsupported(gm)
    torch_nodes = [TorchNode(node.name, target_name(node), reason) for node, reason in unsupported.items()]
    partitioner = CapabilityBasedPartitioner(gm, _Support(set(unsupported)), allows_single_node_partition=True)
    parent = partitioner.fuse_partitions(partitioner.propose_partitions(), prefix="trt_")
    pieces = []
    for call in [n for n in parent.graph.nodes if n.op == "call_module"]:
        sub = getattr(parent, call.target)
        placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
        constants = {}
        for placeholder, arg in zip(placeholders, call.args, strict=True):
            placeholder.meta.update(arg.meta)
            if arg.op == "get_attr":
                constants[placeholder.name] = FrozenTensor(arg.target, getattr(parent, arg.target))
        _check_outputs(call.target, sub)
        pieces.append(Piece(call.target, sub, constants))
    return PartitionedGraph(parent, pieces, torch_nodes)


def _check_outputs(name: str, sub: torch.fx.GraphModule) -> None:
    output = next(n for n in sub.graph.nodes if n.op == "output")
    results = output.args[0] if isinstance(output.args[0], tuple | list) else (output.args[0],)
    for result in results:
        if not isinstance(result.meta.get("val"), torch.Tensor):
            raise NotImplementedError(f"engine {name} would output {result.name}, which is not a tensor")
