"""Precompute what the step graph derives from the token positions alone, as tables read with one gather a step.

Hugging Face computes RoPE's cos and sin from `position_ids` every forward: a cast, a product with `inv_freq`, a
concatenation, cos, sin and casts, about seven launches a decode step for values that depend on the position only.
This pass evaluates that subgraph once for every position the runtime can meet (`config.max_positions`, set by the
runtime's model runner) and replaces each of its outputs with `index_select(table, 1, positions)`.

Only outputs of the token-row form [1, T, ...] are tabulated, and only when the tables read back exactly what the
subgraph computes for a sample of positions (so a subgraph that mixes positions, a cumulative sum say, stays).
A lone gather from a constant (GPT-2's position embedding) is a table already and is left alone.
"""

from __future__ import annotations

import logging

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from trtllm_compile.fx_utils import aten, insert_constant, val
from trtllm_compile.passes.registry import Stage, register_pass

logger = logging.getLogger(__name__)

_SAMPLE_LENGTHS = (1, 3, 8, 17)  # steps of random positions the tables must reproduce exactly


def _position_only(gm: torch.fx.GraphModule, positions: torch.fx.Node) -> tuple[list, set]:
    """Call nodes computed from `positions` and constants alone, in graph order (constants: get_attr nodes and what
    is computed from them alone, such as a cast of `inv_freq`), and which of them read the positions."""
    known, derived, order = {positions}, set(), []
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            known.add(node)
        elif node.op == "call_function" and not node.is_impure() and all(i in known for i in node.all_input_nodes):
            known.add(node)
            order.append(node)
            if any(i is positions or i in derived for i in node.all_input_nodes):
                derived.add(node)
    return order, derived


def _token_rows(node: torch.fx.Node, positions: torch.fx.Node) -> bool:
    value, tokens = val(node), val(positions).shape[1]
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dim() >= 2
        and statically_known_true(value.shape[0] == 1)
        and statically_known_true(value.shape[1] == tokens)
    )


def _subgraph(gm, positions, nodes, outputs) -> torch.fx.GraphModule:
    """`outputs` as a function of the positions alone (constants read from gm)."""
    graph, env = torch.fx.Graph(), {}
    env[positions] = graph.placeholder("position_ids")
    for node in nodes:
        for constant in node.all_input_nodes:
            if constant.op == "get_attr" and constant not in env:
                env[constant] = graph.get_attr(constant.target)
        env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in outputs))
    return torch.fx.GraphModule(gm, graph)


@register_pass(Stage.CACHE)
def tabulate_position_features(gm: torch.fx.GraphModule, config) -> int:
    """f(position_ids) -> index_select(f(arange(max_positions)), 1, position_ids) for position-only subgraphs."""
    limit = getattr(config, "max_positions", 0)
    positions = next((n for n in gm.graph.nodes if n.op == "placeholder" and n.name == "position_ids"), None)
    if not limit or positions is None:
        return 0
    order, derived = _position_only(gm, positions)
    # Tabulated: the last token-row values of each chain (views of them after it, such as RoPE's unsqueeze, stay).
    rows = {n for n in derived if _token_rows(n, positions)}
    outputs = [n for n in order if n in rows and any(u not in rows for u in n.users)]
    ancestry = {n: _ancestors(n) for n in outputs}
    computing = [n for n in outputs if len(ancestry[n] & derived) > 1]  # more than a lone gather from a constant
    if not computing:
        return 0
    needed = set().union(*(ancestry[n] for n in computing))
    evaluate = _subgraph(gm, positions, [n for n in order if n in needed], computing)
    device = val(positions).device
    every = torch.arange(limit, device=device)
    with torch.no_grad():
        try:
            tables = evaluate(every[None])
            for length in _SAMPLE_LENGTHS:  # steps of other lengths: another vector width and tail on some devices
                sample = torch.randperm(limit, device=device)[:length]
                sampled = evaluate(sample[None])
                if not all(torch.equal(t.index_select(1, sample), s) for t, s in zip(tables, sampled, strict=True)):
                    logger.info("position-only subgraph not tabulated: %d positions computed otherwise", length)
                    return 0
        except RuntimeError as error:  # a shape the trace fixed to the example's token count
            logger.info("position-only subgraph not tabulated: %s", error)
            return 0
    with gm.graph.inserting_before(computing[0]):
        flat = gm.graph.call_function(aten.view.default, (positions, [-1]))
    flat.meta["val"] = val(positions).view(-1)
    for node, table in zip(computing, tables, strict=True):
        constant = insert_constant(gm, table, f"{node.name}_table")
        with gm.graph.inserting_before(node):
            gathered = gm.graph.call_function(aten.index_select.default, (constant, 1, flat))
        gathered.meta["val"] = val(node)
        node.replace_all_uses_with(gathered)
    gm.graph.eliminate_dead_code()
    logger.info("tabulated %d position-only values over %d positions", len(computing), limit)
    return len(computing)


def _ancestors(node: torch.fx.Node) -> set[torch.fx.Node]:
    """`node` and every node it is computed from."""
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen
