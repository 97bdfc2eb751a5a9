"""Tensor parallelism over the fused step graph (Megatron layout), for the rank in `config.tensor_parallel`.

- attention: the Q/K/V GEMM keeps this rank's heads (GQA-aware, see parallel/config.py); each part of a fused
  GEMM is cut separately, so the `aten.slice`/`split` views on its output and the head reshapes after them are
  rewritten to the local sizes. The output projection keeps the matching input columns (row-parallel) and is
  followed by an all-reduce. The KV cache then holds this rank's KV heads only.
- MLP: gate/up keep a range of the intermediate size (column-parallel); down projection the same columns,
  then an all-reduce.
- embedding: vocab-parallel (ids outside the rank's rows read zeros, then an all-reduce); LM head: column-
  parallel over the (padded) vocabulary, then an all-gather of the logits.

Quantized GEMMs (trtllm::fp8/int8/int4_linear) are split like float ones, their scales with their weights (see
parallel/rewrites.py); the smoothing multiply SmoothQuant / AWQ put before a row-parallel GEMM keeps the same input
columns, and the FP8 K/V round trip (per-layer scalar scales) passes through unchanged. A row-parallel INT4 GEMM
whose groups straddle a rank boundary cannot be cut: its block stays replicated, with the reason logged.

A row-parallel GEMM's bias is added once, after the all-reduce. Weights are sliced here, as copies, and the full
tensors leave the graph module. Rewritten nodes carry `meta["tensor_parallel"]` ("column", "row", "vocab",
"vocab_column"). A layer the pass does not recognize stays replicated: still correct, and logged as such.
"""

from __future__ import annotations

import logging
import operator
from dataclasses import dataclass, field
from itertools import accumulate

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, is_op, lm_head, val
from trtllm_compile.parallel.config import TensorParallelConfig, balanced_range, shard_heads
from trtllm_compile.parallel.rewrites import (
    GEMMS,
    NotShardable,
    Part,
    ShardWriter,
    operand,
    refresh_values,
    row_split_blocker,
)
from trtllm_compile.passes.registry import Stage, register_pass

logger = logging.getLogger(__name__)

trtllm = torch.ops.trtllm
ATTENTIONS = (trtllm.attention.default, trtllm.paged_attention.default)
_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)
# Ops between a projection and attention that keep every head's values apart (per-head norms, RoPE, layout).
_HEADWISE = (
    *_RESHAPES,
    aten.transpose.int,
    aten.permute.default,
    aten.clone.default,
    aten._to_copy.default,
    aten.to.dtype,
    trtllm.rope.default,
    trtllm.rms_norm.default,
    trtllm.fp8_qdq.default,  # FP8 K/V with one scale per layer
)
_LAYOUT = (
    *_RESHAPES,
    aten.transpose.int,
    aten.permute.default,
    aten.clone.default,
    aten.contiguous.default,
    aten._to_copy.default,
)


@dataclass
class Block:
    """One attention or MLP block: its column-parallel GEMMs (by their consumers), its row-parallel GEMM with every
    rank's input columns of it, and the reshapes whose explicit sizes change."""

    kind: str
    rank: int
    parts: dict[torch.fx.Node, list[Part]] = field(default_factory=dict)
    row: torch.fx.Node | None = None
    row_keeps: list[tuple[int, int]] = field(default_factory=list)  # [start, end) of each rank, in rank order
    reshapes: list[tuple[torch.fx.Node, list]] = field(default_factory=list)
    multipliers: list[torch.fx.Node] = field(default_factory=list)  # x * per-channel scale before the row GEMM

    @property
    def row_keep(self) -> tuple[int, int]:
        return self.row_keeps[self.rank]


def _source(node: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, int, int]:
    """(linear, consumer, start, end) when `node` reads output features [start, end) of a linear."""
    if is_op(node, *GEMMS):
        return node, node, 0, val(node).shape[-1]
    if is_op(node, aten.slice.Tensor) and is_op(node.args[0], *GEMMS):
        linear, dim, start, end = node.args[0], *node.args[1:4]
        width = val(linear).shape[-1]
        if dim in (-1, val(linear).dim() - 1) and (len(node.args) < 5 or node.args[4] == 1):
            return linear, node, start, min(end, width)
    if node.target is operator.getitem and is_op(node.args[0], aten.split.Tensor, aten.split_with_sizes.default):
        split, index = node.args
        linear, sizes = split.args[0], split.args[1]
        dim = split.args[2] if len(split.args) > 2 else 0
        if is_op(linear, *GEMMS) and dim in (-1, val(linear).dim() - 1):
            width = val(linear).shape[-1]
            bounds = [*range(0, width, sizes), width] if isinstance(sizes, int) else [*accumulate(sizes, initial=0)]
            return linear, node, bounds[index], bounds[index + 1]
    raise NotShardable(f"{node} ({node.target}) does not read a GEMM's output features")


def _trace_back(node: torch.fx.Node, allowed) -> tuple[torch.fx.Node, torch.fx.Node, int, int, list[torch.fx.Node]]:
    """Walk from an attention/MLP input back through `allowed` single-user ops to the GEMM features it reads."""
    chain = []
    while True:
        try:
            return (*_source(node), chain)
        except NotShardable:
            if not is_op(node, *allowed) or len(node.users) != 1:
                raise
            chain.append(node)
            node = node.args[0]


def _is_input_multiplier(node: torch.fx.Node) -> bool:
    """x * m with m a frozen [] or [K] scale over x's last dim (quantize_linear's smoothing of a GEMM input)."""
    if not is_op(node, aten.mul.Tensor) or not isinstance(node.args[1], torch.fx.Node):
        return False
    multiplier, x = val(node.args[1]), val(node.args[0])
    return (
        node.args[1].op == "get_attr"
        and isinstance(multiplier, torch.Tensor)
        and (multiplier.dim() == 0 or (multiplier.dim() == 1 and multiplier.shape[0] == x.shape[-1]))
    )


def _trace_forward(node: torch.fx.Node) -> tuple[torch.fx.Node, list[torch.fx.Node]]:
    """Walk from an attention/MLP output through layout ops (and an input smoothing multiply) to the GEMM that
    reads it (the row-parallel one)."""
    chain = []
    while len(node.users) == 1:
        user = next(iter(node.users))
        if is_op(user, *GEMMS) and user.args[0] is node:
            return user, chain
        if not (is_op(user, *_LAYOUT) or _is_input_multiplier(user)) or user.args[0] is not node:
            break
        chain.append(user)
        node = user
    raise NotShardable(f"{node} does not feed one GEMM through layout ops only")


def _set_row(unit: Block, node: torch.fx.Node, keeps: list[tuple[int, int]], full: int, per_row: int):
    """The unit's row-parallel GEMM after `node`, keeping input columns keeps[unit.rank] (keeps: every rank's)."""
    unit.row, chain = _trace_forward(node)
    blocker = row_split_blocker(unit.row, keeps)
    if blocker is not None:
        raise NotShardable(f"{blocker}; the whole {unit.kind} block stays replicated with it")
    unit.row_keeps = keeps
    local = (unit.row_keep[1] - unit.row_keep[0]) // per_row
    unit.reshapes += _local_reshapes(chain, full, local, per_row)
    unit.multipliers = [n for n in chain if is_op(n, aten.mul.Tensor)]
    inputs = val(unit.row.args[0]).shape[-1]
    if any(val(m.args[1]).dim() and val(m.args[1]).shape[0] != inputs for m in unit.multipliers):
        raise NotShardable(f"{unit.row} has an input multiply whose scale is not one per input channel")


def _local_sizes(node: torch.fx.Node, full: int, local: int, per_row: int) -> list | None:
    """New size list of a reshape on a sharded path: the head count (or heads x head_dim) becomes local."""
    sizes = list(node.args[1])
    if any(isinstance(s, int) and s == -1 for s in sizes):
        return None  # the sharded extent is inferred
    if isinstance(sizes[-1], int) and sizes[-1] == full * per_row:
        return [*sizes[:-1], local * per_row]
    if len(sizes) > 1 and isinstance(sizes[-2], int) and sizes[-2] == full:
        return [*sizes[:-2], local, sizes[-1]]
    raise NotShardable(f"{node} reshapes to {sizes}, which has no {full}-wide head dimension to shard")


def _local_reshapes(chain: list[torch.fx.Node], full: int, local: int, per_row: int) -> list[tuple]:
    sized = [(n, _local_sizes(n, full, local, per_row)) for n in chain if is_op(n, *_RESHAPES)]
    return [(n, sizes) for n, sizes in sized if sizes is not None]


def _add_part(unit: Block, traced, keep: tuple[int, int], unit_width: int, full: int, local: int, per_row: int):
    linear, consumer, start, end, chain = traced
    if end - start != unit_width:
        raise NotShardable(f"{consumer} reads {end - start} features where {unit_width} were expected")
    unit.parts.setdefault(linear, []).append(Part(consumer, start, end, *keep))
    unit.reshapes += _local_reshapes(chain, full, local, per_row)


def _plan_attention(node: torch.fx.Node, tp: TensorParallelConfig) -> Block:
    q, k, v = node.args[:3]
    num_heads, num_kv, head_dim, v_dim = val(q).shape[1], val(k).shape[1], val(q).shape[-1], val(v).shape[-1]
    try:
        heads = shard_heads(num_heads, num_kv, tp.world_size, tp.rank)
    except ValueError as error:
        raise NotShardable(str(error)) from error
    unit = Block("attention", tp.rank)
    _add_part(
        unit,
        _trace_back(q, _HEADWISE),
        (heads.q_start * head_dim, heads.q_end * head_dim),
        num_heads * head_dim,
        num_heads,
        heads.num_heads,
        head_dim,
    )
    for x, dim in ((k, head_dim), (v, v_dim)):
        keep = (heads.kv_start * dim, heads.kv_end * dim)
        _add_part(unit, _trace_back(x, _HEADWISE), keep, num_kv * dim, num_kv, heads.num_kv_heads, dim)
    every = [shard_heads(num_heads, num_kv, tp.world_size, rank) for rank in range(tp.world_size)]
    _set_row(unit, node, [(s.q_start * v_dim, s.q_end * v_dim) for s in every], num_heads, v_dim)
    return unit


def _plan_mlp(node: torch.fx.Node, tp: TensorParallelConfig) -> Block:
    gate, up = node.args[:2]
    width = val(gate).shape[-1]
    keep = balanced_range(width, tp.world_size, tp.rank)
    unit = Block("mlp", tp.rank)
    for x in (gate, up) if up is not None else (gate,):
        _add_part(unit, _trace_back(x, _LAYOUT), keep, width, width, keep[1] - keep[0], 1)
    every = [balanced_range(width, tp.world_size, rank) for rank in range(tp.world_size)]
    _set_row(unit, node, every, width, 1)
    return unit


def _check_frozen(unit: Block) -> None:
    """Every tensor operand of the unit's GEMMs (weights, scales, biases) is a constant the writer can slice."""
    for gemm in [*unit.parts, unit.row]:
        layout = GEMMS[gemm.target]
        for index in (layout.weight, layout.bias, *layout.per_row, *layout.per_group, *layout.per_input):
            arg = operand(gemm, index)
            if isinstance(arg, torch.fx.Node) and arg.op != "get_attr":
                raise NotShardable(f"{gemm} reads {arg} as a weight or scale, which is not a frozen constant")


def _check_consumers(unit: Block) -> None:
    """Every reader of a column-parallel GEMM must be one of the unit's parts: no one else sees its output."""
    for linear, parts in unit.parts.items():
        consumers = {p.consumer for p in parts}
        readers = set()
        for user in linear.users:
            readers |= set(user.users) if is_op(user, aten.split.Tensor, aten.split_with_sizes.default) else {user}
        direct = linear in consumers and len(consumers) == 1 and len(linear.users) == 1
        if not direct and consumers != readers:
            raise NotShardable(f"{linear} has readers outside its {unit.kind} block")


def plan_block(node: torch.fx.Node, tp: TensorParallelConfig) -> Block | None:
    """How rank `tp.rank` splits the attention or MLP block `node` (None: `node` is neither); raises NotShardable
    with the reason when it cannot be split."""
    if is_op(node, *ATTENTIONS):
        unit = _plan_attention(node, tp)
    elif is_op(node, trtllm.mlp_activation.default):
        unit = _plan_mlp(node, tp)
    else:
        return None
    _check_consumers(unit)
    _check_frozen(unit)
    return unit


def _shard_vocab(gm: torch.fx.GraphModule, writer: ShardWriter) -> int:
    """The token embedding (of the graph's first input, the token ids) and the LM head."""
    ids = next(n for n in gm.graph.nodes if n.op == "placeholder")
    embeddings = [n for n in ids.users if is_op(n, aten.embedding.default) and n.args[1] is ids]
    head = lm_head(gm)
    head = head if head is not None and len(head.users) == 1 else None
    for node in embeddings:
        writer.vocab_parallel_embedding(node)
    if head is not None:
        writer.gathered_lm_head(head)
    return len(embeddings) + (head is not None)


@register_pass(Stage.SHARD)
def shard_tensor_parallel(gm: torch.fx.GraphModule, config) -> int:
    """Column/row-parallel GEMMs, head-split attention, vocab-parallel embedding and LM head, with collectives."""
    tp: TensorParallelConfig | None = getattr(config, "tensor_parallel", None)
    if tp is None or tp.world_size == 1:
        return 0
    units, replicated = [], []
    for node in list(gm.graph.nodes):
        try:
            unit = plan_block(node, tp)
        except NotShardable as reason:
            replicated.append(f"{node.name}: {reason}")
            continue
        if unit is not None:
            units.append(unit)
    writer = ShardWriter(gm, tp)
    for unit in units:
        for linear, parts in unit.parts.items():
            writer.column_parallel(linear, parts)
        for mul in unit.multipliers:
            writer.input_multiplier(mul, unit.row_keep)
        writer.row_parallel(unit.row, unit.row_keep)
        for node, sizes in unit.reshapes:
            node.update_arg(1, sizes)
    try:
        vocab = _shard_vocab(gm, writer)
    except NotShardable as reason:
        vocab = 0
        replicated.append(f"embedding / LM head: {reason}")
    writer.drop_replaced()
    refresh_values(gm)
    for line in replicated:
        logger.warning("tensor parallel rank %d: left replicated (correct, not split): %s", tp.rank, line)
    logger.info(
        "tensor parallel rank %d of %d: %d attention and %d MLP blocks split, %d vocab-parallel GEMM/embedding(s)",
        tp.rank,
        tp.world_size,
        sum(u.kind == "attention" for u in units),
        sum(u.kind == "mlp" for u in units),
        vocab,
    )
    return len(units) + vocab
