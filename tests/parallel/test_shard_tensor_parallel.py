"""shard_tensor_parallel: every rank's step graph, run with the collectives emulated in threads, computes the
unsharded graph's logits, over a prefill and decodes through each rank's own (smaller) KV cache."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools

import pytest
import torch
from support import FP32_REL_TOL, TINY_MODELS, TinyModel, rel_err
from tp_support import emulate_collectives, run_ranks, step_inputs

from trtllm_compile.config import CompileConfig
from trtllm_compile.fx_utils import op_name
from trtllm_compile.parallel.config import TensorParallelConfig, shard_heads, shard_vocab
from trtllm_compile.parallel.step_graph import build_sharded_step_graphs, place_constants
from trtllm_compile.runtime.step_graph import build_step_graph

BLOCK_SIZE = 4
PROMPTS = ([5, 17, 200, 3, 9], [250, 1, 42])


def _variant(name: str, **overrides) -> TinyModel:
    base = TINY_MODELS[name]
    return dataclasses.replace(base, config={**base.config, **overrides})


MODELS = {
    **{name: TINY_MODELS[name] for name in ("llama", "qwen2", "gpt2", "gptj", "gemma3")},
    "llama-mqa": _variant("llama", num_key_value_heads=1),  # one KV head: replicated on both ranks
    "llama-uneven": _variant("llama", num_attention_heads=6, num_key_value_heads=3, hidden_size=96),  # 2 + 1 groups
}


@functools.cache
def _built(name: str, world_size: int):
    """(model, unsharded step graph, every rank's step graph), built once per module: exports dominate the time."""
    model = MODELS[name.removesuffix("-unfused")].build()
    ranks = [TensorParallelConfig(rank, world_size) for rank in range(world_size)]
    unfused = CompileConfig(disable_passes=frozenset({"fuse_gemms"})) if name.endswith("-unfused") else None
    graphs = build_sharded_step_graphs(model, ranks, unfused)
    for step in graphs:
        place_constants(step.graph_module, torch.device("cpu"))
    return model, build_step_graph(model), graphs


def _sharded(name: str, world_size: int, emulated_by=None):
    graphs = [dataclasses.replace(s, graph_module=copy.deepcopy(s.graph_module)) for s in _built(name, world_size)[2]]
    if emulated_by is not None:
        group = emulated_by(world_size)
        for rank, step in enumerate(graphs):
            emulate_collectives(step.graph_module, group, rank)
    return graphs


def _cache(geometry, num_sequences: int) -> torch.Tensor:
    blocks = num_sequences * 4  # 16 positions per sequence
    return torch.zeros(geometry.num_layers, 2, blocks, BLOCK_SIZE, geometry.num_kv_heads, geometry.head_dim)


def _generate_logits(run_step, caches) -> list[torch.Tensor]:
    """Logits of a two-sequence prefill, then three decodes feeding fixed tokens: [steps] of [ranks] tensors."""
    steps = [[(list(p), 0) for p in PROMPTS]]
    for i in range(3):
        steps.append([([7 + i], len(p) + i) for p in PROMPTS])
    return [run_step([step_inputs(step, cache, BLOCK_SIZE) for cache in caches]) for step in steps]


@pytest.mark.parametrize(("name", "world_size"), [*((name, 2) for name in MODELS), ("llama", 4), ("qwen2-unfused", 2)])
def test_ranks_compute_the_unsharded_logits(name, world_size, thread_group):
    _, reference, _ = _built(name, world_size)
    expected = _generate_logits(lambda inputs: [reference.graph_module(*inputs[0])[0]], [_cache(reference.geometry, 2)])
    graphs = _sharded(name, world_size, thread_group)
    caches = [_cache(step.geometry, 2) for step in graphs]

    def run_step(inputs):
        calls = [lambda g=g, x=x: g.graph_module(*x)[0] for g, x in zip(graphs, inputs, strict=True)]
        return run_ranks(calls)

    for (want,), got in zip(expected, _generate_logits(run_step, caches), strict=True):
        assert got[0].shape == want.shape
        assert rel_err(got[0], want) <= FP32_REL_TOL, f"rel err {rel_err(got[0], want):.1e}"
        assert all(torch.equal(g, got[0]) for g in got)  # every rank sums in rank order: identical logits


def _tags(step) -> collections.Counter:
    nodes = step.graph_module.graph.nodes
    return collections.Counter(n.meta["tensor_parallel"] for n in nodes if "tensor_parallel" in n.meta)


def _ops(step) -> collections.Counter:
    return collections.Counter(op_name(n) for n in step.graph_module.graph.nodes if n.op == "call_function")


@pytest.mark.parametrize(
    ("name", "column", "row"),
    [("llama", 4, 4), ("qwen2", 4, 4), ("gpt2", 4, 4), ("gptj", 4, 4), ("gemma3", 4, 4)],
)
def test_which_gemms_become_column_and_row_parallel(name, column, row):
    rank0, rank1 = _sharded(name, 2)
    assert _tags(rank0) == {"column": column, "row": row, "vocab": 1, "vocab_column": 1}
    ops = _ops(rank0)
    assert ops["_c10d_functional.all_reduce"] == row + 1  # after each row-parallel GEMM and the embedding
    assert ops["_c10d_functional.all_gather_into_tensor"] == 1  # the logits
    assert ops["_c10d_functional.wait_tensor"] == row + 2
    assert _tags(rank1) == _tags(rank0)


@pytest.mark.parametrize(
    ("name", "kv_heads"), [("llama", [1, 1]), ("llama-mqa", [1, 1]), ("llama-uneven", [2, 1]), ("gpt2", [2, 2])]
)
def test_kv_cache_holds_each_ranks_kv_heads_and_weights_hold_its_shard(name, kv_heads):
    model, _, graphs = _built(name, 2)
    full = sum(p.numel() for p in model.parameters())
    assert [step.geometry.num_kv_heads for step in graphs] == kv_heads
    for step in graphs:  # norms and (GPT-2) position embeddings stay whole; everything else is cut in two
        held = sum(b.numel() for b in step.graph_module.buffers())
        assert held < 0.62 * full


def test_heads_that_cannot_be_split_stay_replicated_and_stay_correct(thread_group, caplog):
    _, reference, _ = _built("llama", 3)  # 4 heads, 2 KV heads over 3 ranks: no GQA-consistent split
    assert "left replicated" in caplog.text
    graphs = _sharded("llama", 3, thread_group)
    assert _tags(graphs[0]) == {"column": 2, "row": 2, "vocab": 1, "vocab_column": 1}  # the MLPs only
    prefill = [(list(p), 0) for p in PROMPTS]
    (want,) = reference.graph_module(*step_inputs(prefill, _cache(reference.geometry, 2), BLOCK_SIZE))
    calls = [lambda s=s: s.graph_module(*step_inputs(prefill, _cache(s.geometry, 2), BLOCK_SIZE))[0] for s in graphs]
    assert rel_err(run_ranks(calls)[0], want) <= FP32_REL_TOL


@pytest.mark.parametrize(
    ("heads", "kv_heads", "world_size", "expected"),
    [
        (9, 3, 2, [(0, 6, 0, 2), (6, 9, 2, 3)]),  # SmolLM2: whole GQA groups, 2 + 1
        (4, 2, 2, [(0, 2, 0, 1), (2, 4, 1, 2)]),
        (4, 1, 2, [(0, 2, 0, 1), (2, 4, 0, 1)]),  # MQA: the KV head on both ranks
        (8, 2, 4, [(0, 2, 0, 1), (2, 4, 0, 1), (4, 6, 1, 2), (6, 8, 1, 2)]),
        (32, 32, 2, [(0, 16, 0, 16), (16, 32, 16, 32)]),
    ],
)
def test_head_split(heads, kv_heads, world_size, expected):
    shards = [shard_heads(heads, kv_heads, world_size, rank) for rank in range(world_size)]
    assert [(s.q_start, s.q_end, s.kv_start, s.kv_end) for s in shards] == expected


def test_head_split_that_no_rank_layout_allows_names_the_fix():
    with pytest.raises(ValueError, match="multiple of 2"):
        shard_heads(4, 2, 3, 0)


def test_vocab_split_pads_to_an_even_share():
    shards = [shard_vocab(10, 4, rank) for rank in range(4)]
    assert [(s.start, s.end, s.padded) for s in shards] == [(0, 3, 3), (3, 6, 3), (6, 9, 3), (9, 10, 3)]


def test_placing_a_rank_graph_moves_its_constants_and_the_devices_export_recorded():
    """A bf16 model's RoPE casts its fp32 inv_freq with `.to(x.device, float32)`: export records the device it
    traced on (the host, for ranks), which must follow the constants to the rank's device."""
    (step,) = build_sharded_step_graphs(TINY_MODELS["llama"].build().bfloat16(), [TensorParallelConfig(0, 2)])
    gm = step.graph_module

    def devices():
        return {a for n in gm.graph.nodes for a in (*n.args, *n.kwargs.values()) if isinstance(a, torch.device)}

    assert devices() == {torch.device("cpu")}
    place_constants(gm, torch.device("meta"))
    assert devices() == {torch.device("meta")}
    assert {b.device for b in gm.buffers()} == {torch.device("meta")}
