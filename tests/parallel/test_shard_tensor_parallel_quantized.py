"""shard_tensor_parallel on quantized graphs: every quantized GEMM is split with its scales, and the ranks' step
graphs, run with the collectives emulated in threads, compute the unsharded quantized graph's logits."""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools

import pytest
import torch
from support import LAYERS, TINY_MODELS, rel_err
from tp_support import emulate_collectives, run_ranks, step_inputs

from trtllm_compile.config import CompileConfig
from trtllm_compile.fx_utils import constant_of, is_op
from trtllm_compile.ops.quant import fp8_linear, int8_linear
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.step_graph import place_constants
from trtllm_compile.passes import Stage, run_passes
from trtllm_compile.quantization import QuantConfig, calibrate
from trtllm_compile.runtime.step_graph import export_step_graph, fuse_step_graph

trtllm = torch.ops.trtllm
# with the INT4 gate/up GEMM and its activation as one op (passes/fuse_int4_gated_mlp.py)
QUANT_OPS = (
    trtllm.fp8_linear.default,
    trtllm.int8_linear.default,
    trtllm.int4_linear.default,
    trtllm.int4_gated_linear.default,
)
BLOCK_SIZE = 4
PROMPTS = ([5, 17, 200, 3, 9], [250, 1, 42])

# The ranks hold the unsharded graph's quantized values (weights, scales, zero points: sliced, never requantized),
# so their logits differ only by float32 summation order (a row-parallel GEMM sums two halves, then the all-
# reduce adds them): ~1e-7 relative. The bar leaves room for that order to flip an activation's rounding to the
# 8-bit grid somewhere in the two layers, while any slicing error (a wrong scale row, a shifted INT4 group, a
# bias added twice) moves logits by 1e-2 or more.
SHARDED_REL_TOL = 1e-5

# llama: 4 query / 2 KV heads (GQA, one KV head per rank); qwen2: the same with biases on Q/K/V.
FORMATS = {
    "fp8_static": dict(format="fp8", activations="static"),
    "fp8_dynamic": dict(format="fp8", activations="dynamic"),
    "int8_sq": dict(format="int8_sq"),  # dynamic per-token activations (the default), smoothed inputs
    "int4_awq": dict(format="int4_awq", group_size=32),
    "fp8_lm_head": dict(format="fp8", exclude=()),  # the LM head quantized too: vocab-parallel with its scales
    "int4_misaligned": dict(format="int4_awq", group_size=64),  # o_proj: 64 inputs, 32 per rank
}


def _qconfig(fmt: str) -> QuantConfig:
    options = dict(FORMATS[fmt])
    return QuantConfig.from_name(options.pop("format"), kv_cache="fp8", **options)


@functools.cache
def _built(arch: str, fmt: str, world_size: int = 2):
    """(unsharded quantized step graph, every rank's step graph) from one export and one calibration."""
    model = TINY_MODELS[arch].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, progress=False)
    config = CompileConfig(quantization=_qconfig(fmt).with_calibration(calibration))
    exported = export_step_graph(model)
    graphs = []
    for tp in [None, *(TensorParallelConfig(rank, world_size) for rank in range(world_size))]:
        step = fuse_step_graph(copy.deepcopy(exported), model.config, dataclasses.replace(config, tensor_parallel=tp))
        place_constants(step.graph_module, torch.device("cpu"))
        graphs.append(step)
    return graphs[0], graphs[1:]


def _cache(geometry, num_sequences: int) -> torch.Tensor:
    shape = (geometry.num_layers, 2, num_sequences * 4, BLOCK_SIZE, geometry.num_kv_heads, geometry.head_dim)
    return torch.zeros(shape, dtype=geometry.dtype)


def _generate_logits(run_step, caches) -> list[list[torch.Tensor]]:
    """Logits of a two-sequence prefill, then three decodes feeding fixed tokens: [steps] of [ranks] tensors."""
    steps = [[(list(p), 0) for p in PROMPTS]]
    for i in range(3):
        steps.append([([7 + i], len(p) + i) for p in PROMPTS])
    return [run_step([step_inputs(step, cache, BLOCK_SIZE) for cache in caches]) for step in steps]


def _run_sharded(ranks, thread_group) -> list[list[torch.Tensor]]:
    group = thread_group(len(ranks))
    graphs = [dataclasses.replace(step, graph_module=copy.deepcopy(step.graph_module)) for step in ranks]
    for rank, step in enumerate(graphs):
        emulate_collectives(step.graph_module, group, rank)

    def run_step(inputs):
        calls = [lambda g=g, x=x: g.graph_module(*x)[0] for g, x in zip(graphs, inputs, strict=True)]
        return run_ranks(calls)

    return _generate_logits(run_step, [_cache(s.geometry, 2) for s in graphs])


def _run_unsharded(step) -> list[torch.Tensor]:
    return [
        got[0]
        for got in _generate_logits(lambda inputs: [step.graph_module(*inputs[0])[0]], [_cache(step.geometry, 2)])
    ]


def _summed_over_ranks(kind: str, bounds: tuple, x, weight, weight_scale, input_scale, bias):
    """A W8A8 GEMM computed as the ranks do: each quantizes its own input columns (per-token scales over them),
    the partial outputs are added in rank order, the bias after."""
    op = {"fp8": fp8_linear, "int8": int8_linear}[kind]
    parts = [op(x[..., a:b], weight[:, a:b], weight_scale, input_scale, None) for a, b in bounds]
    out = sum(parts[1:], parts[0].clone())
    return out + bias if bias is not None else out


def _with_rank_local_scales(reference, ranks):
    """The unsharded graph with every row-parallel W8A8 GEMM computed per rank's input columns (the one thing
    dynamic activation scales make differ from the unsharded graph; see parallel/rewrites.py)."""
    step = dataclasses.replace(reference, graph_module=copy.deepcopy(reference.graph_module))
    gm = step.graph_module
    by_name = [{n.name: n for n in r.graph_module.graph.nodes} for r in ranks]
    for node in gm.graph.nodes:
        sharded = by_name[0].get(node.name)
        if sharded is None or sharded.meta.get("tensor_parallel") != "row" or not is_op(node, *QUANT_OPS[:2]):
            continue
        weights = [
            constant_of(r.graph_module, names[node.name].args[1]) for r, names in zip(ranks, by_name, strict=True)
        ]
        widths = [w.shape[1] for w in weights]
        bounds = tuple((sum(widths[:i]), sum(widths[: i + 1])) for i in range(len(widths)))
        kind = "fp8" if node.target is trtllm.fp8_linear.default else "int8"
        node.target, node.args = _summed_over_ranks, (kind, bounds, *node.args)
    gm.recompile()
    return step


CASES = [(arch, fmt) for arch in ("llama", "qwen2") for fmt in ("fp8_static", "fp8_dynamic", "int8_sq", "int4_awq")]


@pytest.mark.parametrize(("arch", "fmt"), CASES)
def test_ranks_compute_the_unsharded_quantized_logits(arch, fmt, thread_group):
    reference, ranks = _built(arch, fmt)
    if _qconfig(fmt).activations == "dynamic":  # W8A8 with per-token scales (INT4 is weight-only: None)
        reference = _with_rank_local_scales(reference, ranks)
    expected = _run_unsharded(reference)
    for want, got in zip(expected, _run_sharded(ranks, thread_group), strict=True):
        assert got[0].shape == want.shape
        assert rel_err(got[0], want) <= SHARDED_REL_TOL, f"rel err {rel_err(got[0], want):.1e}"
        assert all(torch.equal(g, got[0]) for g in got)


def _quantized(step) -> list[torch.fx.Node]:
    return [n for n in step.graph_module.graph.nodes if is_op(n, *QUANT_OPS)]


def _tags(step) -> collections.Counter:
    return collections.Counter(
        n.meta["tensor_parallel"] for n in step.graph_module.graph.nodes if "tensor_parallel" in n.meta
    )


@pytest.mark.parametrize(("arch", "fmt"), CASES)
def test_every_quantized_gemm_is_split_with_its_scales(arch, fmt):
    reference, ranks = _built(arch, fmt)
    full = {n.name: n for n in _quantized(reference)}
    assert len(full) == 4 * LAYERS  # fused Q/K/V, o_proj, fused gate/up, down_proj; the LM head stays float
    for step in ranks:
        assert _tags(step) == {"column": 2 * LAYERS, "row": 2 * LAYERS, "vocab": 1, "vocab_column": 1}
        for node in _quantized(step):
            kind, whole = node.meta["tensor_parallel"], full[node.name]
            dim = 0 if kind == "column" else 1
            for index, arg in enumerate(node.args):
                tensor, unsharded = (
                    constant_of(step.graph_module, arg),
                    constant_of(reference.graph_module, whole.args[index]),
                )
                if tensor is None or tensor.dim() <= dim:
                    assert tensor is None or torch.equal(tensor, unsharded)  # per-tensor scales stay whole
                    continue
                assert tensor.shape[dim] * 2 == unsharded.shape[dim], (node.name, index, kind)


def test_int4_groups_across_a_rank_boundary_leave_that_block_replicated(thread_group, caplog):
    reference, ranks = _built("llama", "int4_misaligned")  # built here, so the warning is captured
    assert "would cut its INT4 groups of 64 inputs: its 64 inputs split at [32]" in caplog.text
    for step in ranks:  # o_proj's 64 inputs split at 32: attention stays whole; the MLPs (128 -> 64) split
        assert _tags(step) == {"column": LAYERS, "row": LAYERS, "vocab": 1, "vocab_column": 1}
    expected = _run_unsharded(reference)
    for want, got in zip(expected, _run_sharded(ranks, thread_group), strict=True):
        assert rel_err(got[0], want) <= SHARDED_REL_TOL


def test_a_quantized_lm_head_is_vocab_parallel_with_its_scales(thread_group):
    """exclude=() quantizes the LM head too: it is cut by vocabulary rows, scales included, and gathered. Checked
    on the graph before the CACHE stage (attention unpaged, all logits), since select_logits takes a float LM head
    only."""
    model = TINY_MODELS["llama"].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, progress=False)
    config = CompileConfig(quantization=_qconfig("fp8_lm_head").with_calibration(calibration))
    exported = export_step_graph(model)
    stages = {Stage.CANONICALIZE, Stage.MATCH, Stage.FUSE, Stage.QUANTIZE, Stage.SHARD}
    graphs = []
    for tp in (None, TensorParallelConfig(0, 2), TensorParallelConfig(1, 2)):
        gm = copy.deepcopy(exported)
        run_passes(gm, dataclasses.replace(config, tensor_parallel=tp), stages=stages)
        graphs.append(gm)
    heads = [n for n in graphs[1].graph.nodes if n.meta.get("tensor_parallel") == "vocab_column"]
    assert len(heads) == 1 and is_op(heads[0], trtllm.fp8_linear.default)
    assert constant_of(graphs[1], heads[0].args[2]).shape == (128,)  # 256 rows' weight scales, cut in two
    ids = torch.tensor([PROMPTS[0]])
    inputs = (ids, torch.arange(ids.shape[1])[None])
    (want,) = graphs[0](*inputs)
    group = thread_group(2)
    for rank, gm in enumerate(graphs[1:]):
        emulate_collectives(gm, group, rank)
    got = run_ranks([lambda gm=gm: gm(*inputs)[0] for gm in graphs[1:]])
    assert rel_err(got[0], want) <= SHARDED_REL_TOL and torch.equal(got[0], got[1])
