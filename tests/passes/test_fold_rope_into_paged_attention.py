"""fold_rope_into_paged_attention: the ropes of q and k move into the paged attention that reads them.

Folded, the graph computes the same step (output and cache, to the bit: the op applies the same `trtllm::rope`
first). Ropes of different embeddings, ropes read elsewhere, and GPT-J's layout (cos not one row per token of
[1, H, T, D]) stay as they are. The step graph of a tiny Llama folds every layer, and its report still counts
two ropes a layer.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from support import LAYERS, TINY_MODELS

from trtllm_compile.passes.fold_rope_into_paged_attention import fold_rope_into_paged_attention
from trtllm_compile.passes.insert_paged_attention import insert_paged_attention
from trtllm_compile.runtime.step_graph import build_step_graph

ops = torch.ops.trtllm
HEADS, KV_HEADS, HEAD_DIM, TOKENS = 4, 2, 16, 5


def _attend(q, k, v):
    return ops.attention(q, k, v, None, HEAD_DIM**-0.5, True, -1, 0.0)


def _rotary_layer(q, k, v, cos, sin):
    return _attend(ops.rope(q, cos, sin, False), ops.rope(k, cos, sin, False), v)


def _interleaved_partial_layer(q, k, v, cos, sin):  # GPT-NeoX-style partial rotary, pairs interleaved
    cos, sin = cos[..., :8], sin[..., :8]
    return _attend(ops.rope(q, cos, sin, True), ops.rope(k, cos, sin, True), v)


def _rope_read_twice(q, k, v, cos, sin):
    q_rotated = ops.rope(q, cos, sin, False)
    return _attend(q_rotated, ops.rope(k, cos, sin, False), v) + q_rotated


def _two_embeddings(q, k, v, cos, sin):
    return _attend(ops.rope(q, cos, sin, False), ops.rope(k, sin, cos, False), v)


def _args():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, TOKENS, HEAD_DIM, generator=gen)
    k, v = (torch.randn(1, KV_HEADS, TOKENS, HEAD_DIM, generator=gen) for _ in range(2))
    angles = torch.randn(1, 1, TOKENS, HEAD_DIM, generator=gen)
    return q, k, v, angles.cos(), angles.sin()


def _paged(trace, fn):
    gm = trace(fn, *_args())
    assert insert_paged_attention(gm, SimpleNamespace(sliding_windows=None)) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def _step(gm):
    """One prefill of the 5 tokens into blocks 2 and 0 of a cache of blocks of 4: (output, cache)."""
    cache = torch.zeros(1, 2, 3, 4, KV_HEADS, HEAD_DIM)
    metadata = (torch.tensor([8, 9, 10, 11, 0]), torch.tensor([[2, 0]], dtype=torch.int32), torch.tensor([5]))
    out = gm(*_args(), cache, *metadata, torch.tensor([0, TOKENS], dtype=torch.int32))
    return out, cache


@pytest.mark.parametrize("fn", [_rotary_layer, _interleaved_partial_layer], ids=["rotate-half", "interleaved-partial"])
def test_folded_ropes_compute_the_same_step(trace, run_pass, op_counts, fn):
    gm = _paged(trace, fn)
    expected_out, expected_cache = _step(gm)
    assert run_pass(fold_rope_into_paged_attention, gm) == 1
    assert op_counts(gm)["trtllm.rope"] == 0
    (paged,) = [n for n in gm.graph.nodes if n.target is ops.paged_attention.default]
    assert paged.kwargs["interleaved"] == (fn is _interleaved_partial_layer)
    out, cache = _step(gm)
    assert torch.equal(out, expected_out) and torch.equal(cache, expected_cache)


@pytest.mark.parametrize("fn", [_rope_read_twice, _two_embeddings], ids=["rope-read-elsewhere", "two-embeddings"])
def test_ropes_that_cannot_fold_stay(trace, run_pass, op_counts, fn):
    gm = _paged(trace, fn)
    assert run_pass(fold_rope_into_paged_attention, gm) == 0
    assert op_counts(gm)["trtllm.rope"] == 2


@pytest.mark.parametrize("family,folded", [("llama", True), ("gptj", False)])
def test_step_graphs_fold_every_layer_and_report_the_ropes(family, folded):
    step = build_step_graph(TINY_MODELS[family].build())
    results = {r.name: r.num_rewrites for r in step.report.passes}
    assert results["fold_rope_into_paged_attention"] == (LAYERS if folded else 0)
    assert step.report.matches["rope"] == 2 * LAYERS
