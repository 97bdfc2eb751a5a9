"""The graph rewrites of tensor parallelism, once the SHARD pass has decided what to cut: column- and row-parallel
GEMMs, the vocab-parallel embedding and the gathered LM head. Each slices its weights here (copies, so the full
tensors can go) and tags the node it rewrote with `meta["tensor_parallel"]`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode

from trtllm_compile.fx_utils import aten, constant_of, insert_constant, val
from trtllm_compile.parallel.collectives import insert_all_gather, insert_all_reduce
from trtllm_compile.parallel.config import TensorParallelConfig, VocabShard, shard_vocab

logger = logging.getLogger(__name__)


class NotShardable(Exception):
    """A layer whose GEMMs cannot be cut consistently; it stays replicated."""


@dataclass
class Part:
    """Output features [start, end) of a column-parallel GEMM that `consumer` reads (a slice, a getitem of a
    split, or the GEMM itself), of which this rank keeps [start + keep_start, start + keep_end)."""

    consumer: torch.fx.Node
    start: int
    end: int
    keep_start: int
    keep_end: int


def bias_node(linear: torch.fx.Node) -> torch.fx.Node | None:
    return linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")


class ShardWriter:
    """Rewrites one graph module for one rank; remembers which full weights its shards replaced."""

    def __init__(self, gm: torch.fx.GraphModule, tp: TensorParallelConfig):
        self.gm, self.tp, self.graph = gm, tp, gm.graph
        self._replaced: set[str] = set()
        self._vocab_rows: dict[tuple, torch.fx.Node] = {}  # a tied embedding / LM head matrix is cut once

    def weights(self, linear: torch.fx.Node) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = constant_of(self.gm, linear.args[1]), bias_node(linear)
        bias_value = constant_of(self.gm, bias) if bias is not None else None
        if weight is None or (bias is not None and bias_value is None):
            raise NotShardable(f"{linear} has no frozen weight")
        return weight, bias_value

    def _constant(self, old: torch.fx.Node, tensor: torch.Tensor) -> torch.fx.Node:
        self._replaced.add(old.target)
        return insert_constant(self.gm, tensor.contiguous().clone(), f"{old.target}_tp{self.tp.rank}")

    def column_parallel(self, linear: torch.fx.Node, parts: list[Part]) -> None:
        """Keep each part's rows of the weight (and bias); the readers' slices move to the local offsets."""
        weight, bias = self.weights(linear)
        parts = sorted(parts, key=lambda p: p.start)
        rows = [(p.start + p.keep_start, p.start + p.keep_end) for p in parts]
        linear.update_arg(1, self._constant(linear.args[1], torch.cat([weight[a:b] for a, b in rows])))
        if bias is not None:
            local_bias = self._constant(bias_node(linear), torch.cat([bias[a:b] for a, b in rows]))
            linear.args = (*linear.args[:2], local_bias)
            linear.kwargs = {}
        offset = 0
        for part in parts:
            width = part.keep_end - part.keep_start
            if part.consumer.target is aten.slice.Tensor:
                part.consumer.args = (linear, -1, offset, offset + width)
            elif part.consumer is not linear:  # a getitem of a split: local parts differ in width, so slice
                with self.graph.inserting_after(linear):
                    local = self.graph.call_function(aten.slice.Tensor, (linear, -1, offset, offset + width))
                part.consumer.replace_all_uses_with(local)
            offset += width
        linear.meta["tensor_parallel"] = "column"

    def row_parallel(self, linear: torch.fx.Node, keep: tuple[int, int]) -> None:
        """Keep input columns `keep`; the partial products are summed by an all-reduce, then the bias is added."""
        weight, _ = self.weights(linear)
        bias = bias_node(linear)
        linear.args = (linear.args[0], self._constant(linear.args[1], weight[:, keep[0] : keep[1]]))
        linear.kwargs = {}
        users = list(linear.users)
        out = insert_all_reduce(self.graph, linear, self.tp.group_name)
        if bias is not None:  # added once, not once per rank
            with self.graph.inserting_after(out):
                out = self.graph.call_function(aten.add.Tensor, (out, bias))
        for user in users:
            user.replace_input_with(linear, out)
        linear.meta["tensor_parallel"] = "row"

    def vocab_rows(self, weight_node: torch.fx.Node) -> tuple[torch.fx.Node, VocabShard, int]:
        """This rank's rows of an embedding / LM head matrix, zero-padded to the even share."""
        weight = constant_of(self.gm, weight_node)
        if weight is None:
            raise NotShardable(f"{weight_node} is not a frozen weight")
        vocab = shard_vocab(weight.shape[0], self.tp.world_size, self.tp.rank)
        key = (weight.data_ptr(), tuple(weight.shape), weight.dtype)
        if key not in self._vocab_rows:
            rows = weight.new_zeros(vocab.padded, *weight.shape[1:])
            rows[: vocab.end - vocab.start] = weight[vocab.start : vocab.end]
            self._vocab_rows[key] = self._constant(weight_node, rows)
        return self._vocab_rows[key], vocab, weight.shape[0]

    def vocab_parallel_embedding(self, node: torch.fx.Node) -> None:
        """Ids outside this rank's rows look up row 0 and are zeroed; the all-reduce adds the one owner's row."""
        rows, vocab, _ = self.vocab_rows(node.args[0])
        ids, graph = node.args[1], self.graph
        with graph.inserting_before(node):
            below = graph.call_function(aten.lt.Scalar, (ids, vocab.start))
            above = graph.call_function(aten.ge.Scalar, (ids, vocab.end))
            outside = graph.call_function(aten.logical_or.default, (below, above))
            shifted = graph.call_function(aten.sub.Tensor, (ids, vocab.start))
            local_ids = graph.call_function(aten.masked_fill.Scalar, (shifted, outside, 0))
        node.args = (rows, local_ids)  # padding_idx only matters to gradients
        users = list(node.users)
        with graph.inserting_after(node):
            mask = graph.call_function(aten.unsqueeze.default, (outside, -1))
        with graph.inserting_after(mask):
            zeroed = graph.call_function(aten.masked_fill.Scalar, (node, mask, 0.0))
        out = insert_all_reduce(graph, zeroed, self.tp.group_name)
        for user in users:
            user.replace_input_with(node, out)
        node.meta["tensor_parallel"] = "vocab"

    def gathered_lm_head(self, head: torch.fx.Node) -> None:
        """[..., padded] logits per rank -> all-gather on dim 0 -> [..., ranks x padded] in rank order -> [..., V]."""
        _, bias = self.weights(head)
        lead = list(val(head).shape[:-1])
        if not lead or sum(not isinstance(s, int) for s in lead) > 1:
            raise NotShardable(f"the LM head's output {tuple(val(head).shape)} has more than one dynamic dim")
        rows, vocab, full = self.vocab_rows(head.args[1])
        head.update_arg(1, rows)
        if bias is not None:
            local = bias.new_zeros(vocab.padded)
            local[: vocab.end - vocab.start] = bias[vocab.start : vocab.end]
            head.args = (*head.args[:2], self._constant(bias_node(head), local))
            head.kwargs = {}
        lead = [s if isinstance(s, int) else -1 for s in lead]  # the token count changes after select_logits
        world = self.tp.world_size
        steps = [
            (aten.view.default, ([world, *lead, vocab.padded],)),
            (aten.permute.default, ([*range(1, len(lead) + 1), 0, len(lead) + 1],)),
            (aten.reshape.default, ([*lead, world * vocab.padded],)),
        ]
        if world * vocab.padded != full:
            steps.append((aten.slice.Tensor, (-1, 0, full)))
        users = list(head.users)
        out = insert_all_gather(self.graph, head, world, self.tp.group_name)
        for op, args in steps:  # a chain through args[0], as select_logits walks it back to the GEMM
            with self.graph.inserting_after(out):
                out = self.graph.call_function(op, (out, *args))
        for user in users:
            user.replace_input_with(head, out)
        head.meta["tensor_parallel"] = "vocab_column"

    def drop_replaced(self) -> None:
        """Delete the full tensors the shards replaced (once dead), so the rank keeps only its slices."""
        self.graph.eliminate_dead_code()
        used = {n.target for n in self.graph.nodes if n.op == "get_attr"}
        for target in self._replaced - used:
            if "." not in target and hasattr(self.gm, target):
                delattr(self.gm, target)


def refresh_values(gm: torch.fx.GraphModule) -> None:
    """Recompute every node's fake value after shapes changed (the KV cache geometry is read from them)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    mode = detect_fake_mode([n.meta.get("val") for n in placeholders])
    if mode is None or any("val" not in n.meta for n in placeholders):
        logger.warning("the graph inputs carry no fake values: node values after sharding are stale")
        return
    env: dict[torch.fx.Node, object] = {}
    with mode, enable_python_dispatcher():  # composite ops (linear) decompose SymInt-aware, as under export
        for node in gm.graph.nodes:
            if node.op == "placeholder":
                env[node] = node.meta["val"]
            elif node.op == "get_attr":
                constant = constant_of(gm, node)
                env[node] = mode.from_tensor(constant, static_shapes=True) if constant is not None else None
            elif node.op == "call_function":
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), lambda n: env[n])
                env[node] = node.meta["val"] = node.target(*args, **kwargs)
