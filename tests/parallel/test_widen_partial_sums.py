"""widen_partial_sums: a bf16 tensor-parallel step graph sums its all-reduces in fp32 and rounds once after, so
TP=2's logits differ from TP=1's only by the order of fp32 additions, not by a second rounding of every partial
sum. Run on CPU with the collectives emulated in threads."""

from __future__ import annotations

import pytest
import torch
from support import TINY_MODELS, rel_err
from tp_support import ThreadGroup, emulate_collectives, run_ranks, step_inputs

from trtllm_compile.config import CompileConfig
from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.parallel.collectives import c10d
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.step_graph import build_sharded_step_graphs, place_constants
from trtllm_compile.runtime.step_graph import build_step_graph

BLOCK_SIZE = 4
PROMPT = [5, 17, 200, 3, 9, 44, 120, 7]
UNWIDENED = CompileConfig(disable_passes=frozenset({"widen_partial_sums"}))


def _logits_of_steps(steps) -> list[torch.Tensor]:
    """Rank 0's logits (or the unsharded graph's) over a prefill and four decodes of fixed tokens."""
    caches = [
        torch.zeros(s.geometry.num_layers, 2, 8, BLOCK_SIZE, s.geometry.num_kv_heads, s.geometry.head_dim).bfloat16()
        for s in steps
    ]
    sequence = [(PROMPT, 0), *(([11 + i], len(PROMPT) + i) for i in range(4))]
    logits = []
    for tokens, start in sequence:
        inputs = [step_inputs([(tokens, start)], cache, BLOCK_SIZE) for cache in caches]
        calls = [lambda s=s, x=x: s.graph_module(*x)[0] for s, x in zip(steps, inputs, strict=True)]
        logits.append(run_ranks(calls)[0].float())
    return logits


def _tp2(model, config=None):
    graphs = build_sharded_step_graphs(model, [TensorParallelConfig(rank, 2) for rank in range(2)], config)
    group = ThreadGroup(2)
    for rank, step in enumerate(graphs):
        place_constants(step.graph_module, torch.device("cpu"))
        emulate_collectives(step.graph_module, group, rank)
    return graphs


@pytest.fixture(scope="module")
def bf16_llama():
    return TINY_MODELS["llama"].build().bfloat16()


def test_every_all_reduce_sums_fp32_and_row_parallel_gemms_keep_their_fp32_sums(bf16_llama):
    layers = bf16_llama.config.num_hidden_layers
    (step,) = build_sharded_step_graphs(bf16_llama, [TensorParallelConfig(0, 2)])
    nodes = step.graph_module.graph.nodes
    reduces = [n for n in nodes if is_op(n, c10d.all_reduce.default)]
    assert len(reduces) == 1 + 2 * layers  # embedding, attention out, MLP down
    assert {val(n.args[0]).dtype for n in reduces} == {torch.float32}
    widened = [n for n in nodes if is_op(n, torch.ops.trtllm.linear.default) and n.kwargs.get("out_dtype")]
    assert len(widened) == 2 * layers and all(n.meta["tensor_parallel"] == "row" for n in widened)
    report = {r.name: r.num_rewrites for r in step.report.passes}
    assert report["widen_partial_sums"] == 1 + 2 * layers
    unsharded = build_step_graph(bf16_llama)
    assert not any(is_op(n, torch.ops.trtllm.linear.default) and n.kwargs for n in unsharded.graph_module.graph.nodes)


def test_tp2_bf16_logits_are_closer_to_tp1_with_fp32_partial_sums(bf16_llama):
    expected = _logits_of_steps([build_step_graph(bf16_llama)])
    widened = _logits_of_steps(_tp2(bf16_llama))
    rounded = _logits_of_steps(_tp2(bf16_llama, UNWIDENED))
    widened_err = max(rel_err(got, want) for got, want in zip(widened, expected, strict=True))
    rounded_err = max(rel_err(got, want) for got, want in zip(rounded, expected, strict=True))
    # What is left is the order of fp32 additions, which changes a bf16 result only near a rounding boundary;
    # rounding every partial sum first changes about half of them.
    assert widened_err * 4 < rounded_err, (widened_err, rounded_err)
    assert [w.argmax(-1).tolist() for w in widened] == [e.argmax(-1).tolist() for e in expected]
