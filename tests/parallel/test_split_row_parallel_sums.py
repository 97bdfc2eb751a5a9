"""split_row_parallel_sums + kernels.fixed_plans (CompileConfig.tp_invariant=2): one device's bf16 logits are
bit-identical to two ranks'. On CPU (reference ops) and on a GPU (our kernels under fixed plans); the ranks
run in threads on one device with the all-reduce emulated (fp32 partial sums added in rank order, as two
ranks' NCCL or peer all-reduce adds them)."""

from __future__ import annotations

import pytest
import torch
from support import TINY_MODELS, rel_err
from tp_support import ThreadGroup, emulate_collectives, run_ranks, step_inputs

from trtllm_compile.config import CompileConfig
from trtllm_compile.fx_utils import constant_of, is_op
from trtllm_compile.kernels import bind_cuda_kernels, fixed_plans, register_cuda_kernels
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.step_graph import build_sharded_step_graphs, place_constants
from trtllm_compile.runtime.step_graph import build_step_graph

BLOCK_SIZE = 16
INVARIANT = CompileConfig(tp_invariant=2)
PROMPTS = [[5, 17, 200, 3, 9, 44, 120, 7, 31, 2, 99], [(7 * i) % 251 + 1 for i in range(27)]]  # 38 prefill rows
# On the GPU: shapes where the fast plans differ between N and N / 2
GPU_LLAMA = dict(hidden_size=1024, intermediate_size=2816, num_attention_heads=8, num_key_value_heads=8)
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _linears(step, **kwargs) -> list[torch.fx.Node]:
    nodes = step.graph_module.graph.nodes
    return [n for n in nodes if is_op(n, torch.ops.trtllm.linear.default) and n.kwargs == kwargs]


def _prepare(steps, device: str, group: ThreadGroup | None = None) -> None:
    for rank, step in enumerate(steps):
        place_constants(step.graph_module, torch.device(device))
        if group is not None:
            emulate_collectives(step.graph_module, group, rank)
        if device == "cuda":
            bind_cuda_kernels(step.graph_module)


def _logits_of_steps(steps, device: str, fixed: bool = True) -> list[torch.Tensor]:
    """Rank 0's logits (or the one-device graph's) over a batched prefill of PROMPTS and four decode steps, the
    kernels in their fixed plans (or tuned, `fixed=False`)."""
    g = steps[0].geometry
    caches = [
        torch.zeros(g.num_layers, 2, 16, BLOCK_SIZE, s.geometry.num_kv_heads, g.head_dim, dtype=g.dtype, device=device)
        for s in steps
    ]
    batches = [[(p, 0) for p in PROMPTS]]
    batches += [[([11 + i], len(p) + i) for p in PROMPTS] for i in range(4)]
    logits = []
    for batch in batches:
        inputs = [[t.to(device) for t in step_inputs(batch, cache, BLOCK_SIZE)] for cache in caches]
        for x in inputs:
            x[6] = x[6].cpu()  # sequence starts: read on the host
        calls = [lambda s=s, x=x: s.graph_module(*x)[0] for s, x in zip(steps, inputs, strict=True)]
        with fixed_plans(fixed):
            logits.append(run_ranks(calls)[0].float().cpu())
    return logits


def _tp1_and_tp2(model, device: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    tp1 = build_step_graph(model, INVARIANT)
    _prepare([tp1], device)
    tp2 = build_sharded_step_graphs(model, [TensorParallelConfig(r, 2) for r in range(2)], INVARIANT)
    _prepare(tp2, device, ThreadGroup(2))
    return _logits_of_steps([tp1], device), _logits_of_steps(tp2, device)


def test_one_device_sums_each_row_parallel_gemm_as_two_ranks_over_views_of_its_weight():
    model = TINY_MODELS["llama"].build().bfloat16()
    layers = model.config.num_hidden_layers
    step = build_step_graph(model, INVARIANT)
    assert {r.name: r.num_rewrites for r in step.report.passes}["split_row_parallel_sums"] == 2 * layers
    partials = _linears(step, out_dtype=torch.float32)
    assert len(partials) == 4 * layers
    o_proj = model.model.layers[0].self_attn.o_proj.weight
    first, second = (constant_of(step.graph_module, n.args[1]) for n in partials[:2])
    assert first.shape == second.shape == (o_proj.shape[0], o_proj.shape[1] // 2)
    assert first.data_ptr() == o_proj.data_ptr() and second.data_ptr() == o_proj[:, o_proj.shape[1] // 2 :].data_ptr()
    fast = build_step_graph(model)
    assert not _linears(fast, out_dtype=torch.float32)
    assert {r.name: r.num_rewrites for r in fast.report.passes}["split_row_parallel_sums"] == 0


@pytest.mark.parametrize("name", ["llama", "gpt2"])  # gpt2: row-parallel biases, added once to the fp32 sum
def test_one_device_gives_two_ranks_bf16_logits_bit_for_bit_on_cpu(name):
    one, two = _tp1_and_tp2(TINY_MODELS[name].build().bfloat16(), "cpu")
    for got, want in zip(two, one, strict=True):
        assert torch.equal(got, want)


@gpu
@needs_cuda
def test_one_gpu_gives_two_ranks_bf16_logits_bit_for_bit_under_fixed_plans():
    assert register_cuda_kernels()
    model = TINY_MODELS["llama"].with_config(**GPU_LLAMA).build().bfloat16().cuda()
    one, two = _tp1_and_tp2(model, "cuda")
    for got, want in zip(two, one, strict=True):
        assert torch.equal(got, want), (got - want).abs().max()
    fast = build_step_graph(model)  # tuned plans and cuBLAS: the fixed plans compute the same logits, in bf16
    _prepare([fast], "cuda")
    for got, want in zip(one, _logits_of_steps([fast], "cuda", fixed=False), strict=True):
        assert rel_err(got, want) < 2e-2


@pytest.mark.parametrize(
    ("tp_invariant", "world_size", "message"),
    [(3, 1, "tp_invariant in (2,)"), (2, 4, "reproduces tensor_parallel_size 1 and 2, not 4")],
)
def test_a_tp_invariant_that_cannot_hold_names_what_can(tp_invariant, world_size, message):
    model = TINY_MODELS["llama"].build().bfloat16()
    config = CompileConfig(tp_invariant=tp_invariant)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_sharded_step_graphs(model, [TensorParallelConfig(0, world_size)], config)
