"""The graph rewrites of tensor parallelism, once the SHARD pass has decided what to cut: column- and row-parallel
GEMMs, the vocab-parallel embedding and the gathered LM head. Each slices its weights here (copies, so the full
tensors can go) and tags the node it rewrote with `meta["tensor_parallel"]`.

Quantized GEMMs are cut like float ones, their scales with their weights (`GEMMS` says which argument is what):
column-parallel keeps the output rows of the weight and of every per-output-channel tensor (weight scales, INT4
group scales and zero points, bias); row-parallel keeps input columns of the weight (INT4: packed bytes and whole
groups, so each rank's range must start on a group boundary, see `row_split_blocker`) and of any per-input-channel
tensor. Per-tensor scales ([]) are replicated. Dynamic per-token activation scales of a row-parallel GEMM are then
taken over the rank's own input columns, as TensorRT-LLM and vLLM do: no extra collective, and a scale at least as
fine as the unsharded one."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode

from trtllm_compile import ops  # noqa: F401  (registers the trtllm ops)
from trtllm_compile.fx_utils import aten, constant_of, insert_constant, val
from trtllm_compile.parallel.collectives import insert_all_gather, insert_all_reduce
from trtllm_compile.parallel.config import TensorParallelConfig, VocabShard, shard_vocab

logger = logging.getLogger(__name__)

trtllm = torch.ops.trtllm


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


@dataclass(frozen=True)
class GemmArgs:
    """Which argument of a GEMM op is what (indices into its schema), so float and quantized GEMMs are cut alike.

    weight: [N, K], or [N, K / 2] with two INT4 codes per byte along K (`packed`, see ops.quant.unpack_int4).
    per_row: one entry per output channel in dim 0 ([N] scales, [N, G] INT4 scales and zero points).
    per_group: columns that are groups of the `group_size` argument's inputs (INT4 scales and zero points).
    per_input: one entry per input channel ([K]) or per tensor ([]): activation scales.
    """

    weight: int
    bias: int
    per_row: tuple[int, ...] = ()
    per_group: tuple[int, ...] = ()
    per_input: tuple[int, ...] = ()
    group_size: int | None = None
    packed: bool = False


GEMMS = {
    aten.linear.default: GemmArgs(weight=1, bias=2),
    trtllm.linear.default: GemmArgs(weight=1, bias=2),  # aten.linear lowered (passes/lower_linear.py)
    trtllm.fp8_linear.default: GemmArgs(weight=1, bias=4, per_row=(2,), per_input=(3,)),
    trtllm.int8_linear.default: GemmArgs(weight=1, bias=4, per_row=(2,), per_input=(3,)),
    trtllm.int4_linear.default: GemmArgs(weight=1, bias=5, per_row=(2, 3), per_group=(2, 3), group_size=4, packed=True),
}


def operand(node: torch.fx.Node, index: int):
    """Argument `index` of a call, whether passed by position, by keyword or left to its default."""
    if index < len(node.args):
        return node.args[index]
    argument = node.target._schema.arguments[index]
    default = argument.default_value if argument.has_default_value() else None
    return node.kwargs.get(argument.name, default)


def set_operands(node: torch.fx.Node, updates: dict[int, object]) -> None:
    """Replace arguments by index; every argument becomes positional (trailing ones left at a None default drop)."""
    schema = node.target._schema.arguments
    count = len(schema) if node.kwargs else max(len(node.args), max(updates) + 1)
    args = [updates.get(i, operand(node, i)) for i in range(count)]
    while args and args[-1] is None and schema[len(args) - 1].has_default_value():
        args.pop()
    node.args, node.kwargs = tuple(args), {}


def bias_node(linear: torch.fx.Node) -> torch.fx.Node | None:
    return operand(linear, GEMMS[linear.target].bias)


def row_split_blocker(gemm: torch.fx.Node, keeps: list[tuple[int, int]]) -> str | None:
    """Why the input columns `keeps` (every rank's [start, end)) cannot be cut from `gemm`, or None if they can."""
    layout = GEMMS[gemm.target]
    if layout.group_size is None:
        return None
    group, inputs = operand(gemm, layout.group_size), val(gemm.args[0]).shape[-1]
    starts = sorted({start for start, _ in keeps} - {0})
    if any(start % group or start % 2 for start in starts):
        return (
            f"row-parallel {gemm.name} would cut its INT4 groups of {group} inputs: its {inputs} inputs split "
            f"at {starts} over {len(keeps)} ranks, and each rank must hold whole groups; quantize with a group size "
            f"that divides {min(end - start for start, end in keeps)}, or use fewer ranks"
        )
    return None


class ShardWriter:
    """Rewrites one graph module for one rank; remembers which full weights its shards replaced."""

    def __init__(self, gm: torch.fx.GraphModule, tp: TensorParallelConfig):
        self.gm, self.tp, self.graph = gm, tp, gm.graph
        self._replaced: set[str] = set()
        self._vocab_rows: dict[tuple, torch.fx.Node] = {}  # a tied embedding / LM head matrix is cut once

    def operands(self, gemm: torch.fx.Node) -> dict[int, tuple[torch.fx.Node, torch.Tensor]]:
        """The GEMM's tensor operands (weight, scales, bias) by argument index; all must be frozen constants."""
        layout = GEMMS[gemm.target]
        indices = {layout.weight, layout.bias, *layout.per_row, *layout.per_group, *layout.per_input}
        tensors = {}
        for index in sorted(indices):
            node = operand(gemm, index)
            if node is None:
                continue
            tensor = constant_of(self.gm, node)
            if tensor is None:
                raise NotShardable(f"{gemm} has an operand that is not a frozen weight ({node})")
            tensors[index] = (node, tensor)
        return tensors

    def _constant(self, old: torch.fx.Node, tensor: torch.Tensor) -> torch.fx.Node:
        self._replaced.add(old.target)
        return insert_constant(self.gm, tensor.contiguous().clone(), f"{old.target}_tp{self.tp.rank}")

    def column_parallel(self, linear: torch.fx.Node, parts: list[Part]) -> None:
        """Keep each part's rows of the weight, its per-row scales and bias; the readers' slices move to the local
        offsets. Per-tensor scales ([]) stay whole."""
        layout = GEMMS[linear.target]
        parts = sorted(parts, key=lambda p: p.start)
        rows = [(p.start + p.keep_start, p.start + p.keep_end) for p in parts]
        updates = {}
        for index, (node, tensor) in self.operands(linear).items():
            if index in (layout.weight, layout.bias, *layout.per_row) and tensor.dim() > 0:
                updates[index] = self._constant(node, torch.cat([tensor[a:b] for a, b in rows]))
        set_operands(linear, updates)
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

    def _input_columns(self, linear: torch.fx.Node, keep: tuple[int, int]) -> dict[int, torch.fx.Node]:
        """This rank's input columns of the weight (bytes of packed INT4 codes), INT4 groups and input scales."""
        layout, (start, end) = GEMMS[linear.target], keep
        updates = {}
        for index, (node, tensor) in self.operands(linear).items():
            if index == layout.weight:
                local = tensor[:, start // 2 : end // 2] if layout.packed else tensor[:, start:end]
            elif index in layout.per_group:
                group = operand(linear, layout.group_size)  # row_split_blocker checked the start is aligned
                local = tensor[:, start // group : -(-end // group)]
            elif index in layout.per_input and tensor.dim() == 1:
                local = tensor[start:end]
            else:
                continue
            updates[index] = self._constant(node, local)
        return updates

    def input_multiplier(self, mul: torch.fx.Node, keep: tuple[int, int]) -> None:
        """x * m before a row-parallel GEMM (SmoothQuant / AWQ smoothing), m per input channel: keep its columns."""
        multiplier = constant_of(self.gm, mul.args[1])
        if multiplier is None:
            raise NotShardable(f"{mul} multiplies by {mul.args[1]}, not by a frozen per-channel scale")
        if multiplier.dim() > 0:
            mul.update_arg(1, self._constant(mul.args[1], multiplier[..., keep[0] : keep[1]]))

    def row_parallel(self, linear: torch.fx.Node, keep: tuple[int, int]) -> None:
        """Keep input columns `keep`; the partial products are summed by an all-reduce, then the bias is added."""
        bias = bias_node(linear)
        set_operands(linear, {**self._input_columns(linear, keep), GEMMS[linear.target].bias: None})
        users = list(linear.users)
        out = insert_all_reduce(self.graph, linear, self.tp.group_name)
        if bias is not None:  # added once, not once per rank
            with self.graph.inserting_after(out):
                out = self.graph.call_function(aten.add.Tensor, (out, bias))
        for user in users:
            user.replace_input_with(linear, out)
        linear.meta["tensor_parallel"] = "row"

    def vocab_rows(self, weight_node: torch.fx.Node) -> tuple[torch.fx.Node, VocabShard, int]:
        """This rank's rows of an embedding / LM head matrix (or of its per-row scales), zero-padded to the even
        share: the padded logits are sliced off after the gather, whatever they are."""
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
        layout = GEMMS[head.target]
        operands = self.operands(head)
        lead = list(val(head).shape[:-1])
        if not lead:
            raise NotShardable(f"the LM head's output {tuple(val(head).shape)} has no leading dims")
        updates, vocab, full = {}, None, None
        for index, (node, tensor) in operands.items():
            if index in (layout.weight, layout.bias, *layout.per_row) and tensor.dim() > 0:
                updates[index], shard, rows = self.vocab_rows(node)
                if index == layout.weight:
                    vocab, full = shard, rows
        set_operands(head, updates)
        world = self.tp.world_size
        users = list(head.users)
        gathered = insert_all_gather(self.graph, head, world, self.tp.group_name)
        # Dynamic leading sizes are read off the head's output when the step runs: select_logits (a later pass)
        # changes the token count, and a TensorRT step has two dynamic dims (batch, tokens).
        anchor, sizes = gathered, []
        for dim, size in enumerate(lead):
            if not isinstance(size, int):
                with self.graph.inserting_after(anchor):
                    anchor = size = self.graph.call_function(aten.sym_size.int, (head, dim))
            sizes.append(size)
        steps = [
            (aten.view.default, ([world, *sizes, vocab.padded],)),
            (aten.permute.default, ([*range(1, len(lead) + 1), 0, len(lead) + 1],)),
            (aten.reshape.default, ([*sizes, world * vocab.padded],)),
        ]
        if world * vocab.padded != full:
            steps.append((aten.slice.Tensor, (-1, 0, full)))
        out = gathered
        for op, args in steps:  # a chain through args[0], as select_logits walks it back to the GEMM
            with self.graph.inserting_after(anchor):
                anchor = out = self.graph.call_function(op, (out, *args))
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
