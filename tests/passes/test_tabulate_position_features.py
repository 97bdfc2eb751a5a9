"""tabulate_position_features: what a step graph derives from the positions alone (RoPE's cos and sin) becomes a
table over every position, read with one gather, and the step computes the same logits to the bit. GPT-2's
position embedding (a gather already) and graphs without a position bound stay as they are."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from support import TINY_MODELS

from trtllm_compile.config import CompileConfig
from trtllm_compile.passes.tabulate_position_features import tabulate_position_features
from trtllm_compile.runtime.step_graph import build_step_graph

MAX_POSITIONS = 64


def _step_graph(family: str, max_positions: int):
    model = TINY_MODELS[family].build()
    return build_step_graph(model, CompileConfig(max_positions=max_positions)), model


def _prefill(step, model):
    """Logits of one 7-token prefill at positions 20..26 (a cache of 4 blocks of 16)."""
    geometry, tokens = step.geometry, 7
    cache = torch.zeros(geometry.num_layers, 2, 4, 16, geometry.num_kv_heads, geometry.head_dim)
    input_ids = torch.randint(1, 256, (1, tokens), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(20, 20 + tokens)[None]
    metadata = (torch.arange(20, 27), torch.tensor([[0, 1, 2, 3]], dtype=torch.int32), torch.tensor([27]))
    starts, last = torch.tensor([0, tokens], dtype=torch.int32), torch.tensor([tokens - 1])
    return step.graph_module(input_ids, positions, cache, *metadata, starts, last)[0]


@pytest.mark.parametrize("family,tables", [("llama", 2), ("gemma3", 4), ("gpt2", 0)])
def test_position_only_values_become_tables_with_the_same_logits(family, tables):
    step, model = _step_graph(family, MAX_POSITIONS)
    counts = {r.name: r.num_rewrites for r in step.report.passes}
    assert counts["tabulate_position_features"] == tables
    untabulated, _ = _step_graph(family, 0)
    assert {r.name: r.num_rewrites for r in untabulated.report.passes}["tabulate_position_features"] == 0
    gathers = [n for n in step.graph_module.graph.nodes if n.target is torch.ops.aten.index_select.default]
    assert len(gathers) == tables + 1  # and select_logits' gather
    assert torch.equal(_prefill(step, model), _prefill(untabulated, model))


@pytest.mark.parametrize("mix", ["cumsum", "fixed-length"])
def test_values_that_mix_positions_or_fix_their_count_are_not_tabulated(trace, mix):
    def position_values(position_ids, x):
        ramp = position_ids.float().cumsum(1)[..., None] if mix == "cumsum" else position_ids.float()[..., None]
        return x + (ramp if mix == "cumsum" else ramp.expand(1, 5, 4)).cos()

    gm = trace(position_values, torch.arange(5)[None], torch.randn(1, 5, 4))
    positions = next(n for n in gm.graph.nodes if n.op == "placeholder")
    positions.name = "position_ids"  # as a step graph names it
    config = dataclasses.replace(CompileConfig(), max_positions=MAX_POSITIONS)
    assert tabulate_position_features(gm, config) == 0
