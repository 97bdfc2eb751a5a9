"""Tensor-parallel TensorRT engines (TP=2, tiny Llama): every rank's prefill and decode engines build on the CPU,
with the graph's collectives as distributed-collective layers over both ranks and the rank's shard of the weights.

What is checked is the build: these engines cannot run here. tensorrt_rtx cannot deserialize or execute an engine
without a GPU (so TensorRT's engine inspector cannot open them either: layer counts are the networks', recorded in
the manifest at build time), and the collectives need one GPU per rank and NCCL at run time.
"""

from __future__ import annotations

import pytest
import torch
from network_support import MAX_BATCH, MAX_SEQ, builds, new_network, output_shapes
from support import TINY_MODELS

from trtllm_compile.fx_utils import constant_of, is_op
from trtllm_compile.parallel.collectives import collective_nodes
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.tensorrt import UnsupportedOperatorError
from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.build import BuildSettings
from trtllm_compile.tensorrt.cache import cache_key
from trtllm_compile.tensorrt.converters import find_converter
from trtllm_compile.tensorrt.converters.collectives import GROUP_META
from trtllm_compile.tensorrt.export import export_step_graph
from trtllm_compile.tensorrt.network import convert_graph
from trtllm_compile.tensorrt.parallel import build_rank_engines

WORLD = 2
c10d = torch.ops._c10d_functional
aten = torch.ops.aten


@pytest.fixture(scope="module")
def llama():
    return TINY_MODELS["llama"].build()


@pytest.fixture(scope="module")
def rank_builds(llama, engine_cache):
    return build_rank_engines(
        llama, WORLD, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=engine_cache, progress=False
    )


def _network(model, tp: TensorParallelConfig | None):
    """(step graph, prefill network) as `build` converts them, kept for inspection."""
    graph = export_step_graph(model, torch.float16, MAX_BATCH, MAX_SEQ, MAX_SEQ, tensor_parallel=tp)
    _, network = new_network()
    return graph.graph_module, convert_graph(graph.graph_module, network).network


@pytest.fixture(scope="module")
def networks(llama):
    """The unsharded network, then rank 0's and rank 1's."""
    return [_network(llama, None)] + [_network(llama, TensorParallelConfig(r, WORLD)) for r in range(WORLD)]


def _layers(network, kind: str) -> list:
    return [network.get_layer(i) for i in range(network.num_layers) if network.get_layer(i).type.name == kind]


def test_every_rank_builds_prefill_and_decode_on_cpu(rank_builds):
    assert len(rank_builds) == WORLD
    for rank, result in enumerate(rank_builds):
        assert set(result.engines) == {"prefill", "decode"}
        for engine in result.engines.values():
            assert engine.path.exists() and engine.path.stat().st_size == engine.num_bytes > 0
        assert result.torch_nodes == [] and result.report.fallbacks == []  # every node is in the engines
        assert result.manifest["settings"]["tensor_parallel"] == {"rank": rank, "world_size": WORLD, "group_name": "0"}


def test_collectives_are_distributed_collective_layers(llama, rank_builds, networks):
    layers = llama.config.num_hidden_layers
    # An all-reduce after each row-parallel GEMM (attention o_proj, MLP down) and after the vocab-parallel
    # embedding; one all-gather of the vocab-parallel LM head's logits.
    all_reduces, all_gathers = 2 * layers + 1, 1
    for result, (gm, network) in zip(rank_builds, networks[1:], strict=True):
        ops = [n.target for n in collective_nodes(gm)]
        assert ops.count(c10d.all_reduce.default) == all_reduces
        assert ops.count(c10d.all_gather_into_tensor.default) == all_gathers
        for engine in result.engines.values():
            assert engine.layer_counts["DIST_COLLECTIVE"] == all_reduces + all_gathers
            assert engine.layer_counts["ATTENTION_INPUT"] == layers  # one native attention per layer, as unsharded
        shapes = []
        for layer in _layers(network, "DIST_COLLECTIVE"):
            layer.__class__ = flavour.trt.IDistCollectiveLayer  # the Python API's downcast
            assert layer.num_ranks == WORLD
            shapes.append((tuple(layer.get_input(0).shape), tuple(layer.get_output(0).shape)))
        # all-reduces keep the shape; the all-gather stacks the ranks along dim 0 (dynamic here: the batch)
        assert all(out[1:] == inp[1:] for inp, out in shapes)
    assert "DIST_COLLECTIVE" not in _layers_by_kind(networks[0][1])


def _layers_by_kind(network) -> set[str]:
    return {network.get_layer(i).type.name for i in range(network.num_layers)}


def _gemm_weight_shapes(gm, network) -> list[tuple[tuple[int, ...], str | None]]:
    """(weight shape, tensor_parallel tag) of each GEMM: the matrix-multiply layers' constant operand, in order,
    beside the graph's `aten.linear` nodes in the same order."""
    linears = [n for n in gm.graph.nodes if is_op(n, aten.linear.default)]
    shapes = [tuple(layer.get_input(1).shape)[-2:] for layer in _layers(network, "MATRIX_MULTIPLY")]
    assert len(shapes) == len(linears)
    return [(shape, linear.meta.get("tensor_parallel")) for shape, linear in zip(shapes, linears, strict=True)]


def test_each_rank_holds_half_the_gemm_weights(llama, networks):
    full = _gemm_weight_shapes(*networks[0])
    for gm, network in networks[1:]:
        sharded = _gemm_weight_shapes(gm, network)
        tags = [tag for _, tag in sharded]
        layers = llama.config.num_hidden_layers
        assert tags.count("column") == tags.count("row") == 2 * layers  # QKV, gate/up | o_proj, down
        assert tags.count("vocab_column") == 1 and None not in tags  # every GEMM is split
        for (shape, tag), (full_shape, _) in zip(sharded, full, strict=True):
            out_features, in_features = full_shape
            expected = {
                "column": (out_features // WORLD, in_features),  # e.g. the fused QKV: half the heads
                "row": (out_features, in_features // WORLD),
                "vocab_column": (-(-out_features // WORLD), in_features),  # the LM head: the rank's vocab rows
            }[tag]
            assert shape == expected, f"{tag} GEMM {full_shape} -> {shape}"
        (table,) = [n for n in gm.graph.nodes if is_op(n, aten.embedding.default)]
        vocab_rows = -(-llama.config.vocab_size // WORLD)  # vocab-parallel: the rank's rows, padded to an even share
        assert tuple(constant_of(gm, table.args[0]).shape) == (vocab_rows, llama.config.hidden_size)


def test_ranks_differ_and_are_cached_apart(llama, rank_builds, engine_cache):
    rank0, rank1 = rank_builds
    assert rank0.cache_key != rank1.cache_key and rank0.directory != rank1.directory
    for step in ("prefill", "decode"):
        assert rank0.engines[step].path.read_bytes() != rank1.engines[step].path.read_bytes()
    unsharded = BuildSettings(max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, dtype=torch.float16).as_dict()
    assert cache_key(llama, unsharded, flavour.version()) not in {rank0.cache_key, rank1.cache_key}
    again = build_rank_engines(
        llama, WORLD, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=engine_cache, progress=False
    )
    assert [r.cache_hit for r in again] == [True, True]
    assert [r.cache_key for r in again] == [rank0.cache_key, rank1.cache_key]


def _collective_graph(target, args, out_shape, tp: TensorParallelConfig | None) -> torch.fx.GraphModule:
    """x [3, 4] fp16 -> collective -> wait_tensor, built by hand: tracing a collective needs a process group."""
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["val"] = torch.empty(3, 4, dtype=torch.float16)
    collective = graph.call_function(target, (x, *args))
    collective.meta["val"] = torch.empty(out_shape, dtype=torch.float16)
    if tp is not None:
        collective.meta[GROUP_META] = tp
    waited = graph.call_function(c10d.wait_tensor.default, (collective,))
    waited.meta["val"] = collective.meta["val"]
    graph.output(waited)
    return torch.fx.GraphModule(torch.nn.Module(), graph)


@pytest.mark.parametrize("reduce_op", ["sum", "avg", "max"])
def test_all_reduce_converts_and_builds(reduce_op):
    gm = _collective_graph(c10d.all_reduce.default, (reduce_op, "0"), (3, 4), TensorParallelConfig(1, WORLD))
    builder, network = new_network()
    converted = convert_graph(gm, network)
    converted.builder = builder
    assert converted.layer_counts() == {"DIST_COLLECTIVE": 1}  # wait_tensor adds no layer
    assert output_shapes(converted) == [(3, 4)]
    assert builds(converted)


def test_all_gather_concatenates_the_ranks_along_dim_0():
    gm = _collective_graph(c10d.all_gather_into_tensor.default, (WORLD, "0"), (6, 4), TensorParallelConfig(0, WORLD))
    builder, network = new_network()
    converted = convert_graph(gm, network)
    converted.builder = builder
    (layer,) = _layers(network, "DIST_COLLECTIVE")
    layer.__class__ = flavour.trt.IDistCollectiveLayer
    assert layer.num_ranks == WORLD
    assert output_shapes(converted) == [(3 * WORLD, 4)]
    assert builds(converted)


def test_collectives_that_cannot_convert_name_the_fix():
    bitwise = _collective_graph(c10d.all_reduce.default, ("bxor", "0"), (3, 4), TensorParallelConfig(0, WORLD))
    node = next(n for n in bitwise.graph.nodes if n.target is c10d.all_reduce.default)
    spec, reason = find_converter(node)
    assert spec is None and "'bxor'" in reason and "partition=True" in reason
    untagged = _collective_graph(c10d.all_reduce.default, ("sum", "0"), (3, 4), None)  # no group, no tag
    with pytest.raises(UnsupportedOperatorError, match="tensor_parallel=TensorParallelConfig") as error:
        convert_graph(untagged, new_network()[1])
    assert isinstance(error.value, NotImplementedError)


def test_masked_fill_is_a_select():
    gm = torch.fx.symbolic_trace(lambda x, m: torch.ops.aten.masked_fill.Scalar(x, m, 0.0))
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    placeholders[0].meta["val"] = torch.empty(2, 4, dtype=torch.float16)
    placeholders[1].meta["val"] = torch.empty(2, 1, dtype=torch.bool)
    fill = next(n for n in gm.graph.nodes if n.op == "call_function")
    fill.meta["val"] = torch.empty(2, 4, dtype=torch.float16)
    builder, network = new_network()
    converted = convert_graph(gm, network)
    converted.builder = builder
    assert "SELECT" in converted.layer_counts() and output_shapes(converted) == [(2, 4)]
    assert builds(converted)


def test_cli_build_tp_writes_one_engine_pair_per_rank(llama, rank_builds, engine_cache, smollm2, tmp_path, capsys):
    from trtllm_compile.cli import main

    llama.save_pretrained(tmp_path / "model")
    smollm2[1].save_pretrained(tmp_path / "model")  # any tokenizer: the CLI loads a folder like a user's
    out = tmp_path / "engines"
    argv = ["build", str(tmp_path / "model"), "--out", str(out), "--tp", str(WORLD), "--no-progress"]
    argv += ["--max-batch-size", str(MAX_BATCH), "--max-seq-len", str(MAX_SEQ), "--cache-dir", str(engine_cache)]
    assert main(argv) == 0
    for rank in range(WORLD):
        assert {p.name for p in (out / f"rank{rank}").iterdir()} >= {"prefill.engine", "decode.engine", "manifest.json"}
    assert f"rank {WORLD - 1} of {WORLD}:" in capsys.readouterr().out
