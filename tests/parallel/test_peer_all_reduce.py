"""The one-shot peer-memory all-reduce: how it is bound into a rank's step graph (CPU, its collectives emulated
by threads), and the kernel itself against NCCL on two GPUs, eagerly and inside CUDA graphs."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support import FP32_REL_TOL, TINY_MODELS, rel_err
from tp_support import ThreadGroup, emulate_collectives, run_ranks, step_inputs

from trtllm_compile.fx_utils import is_op
from trtllm_compile.parallel.collectives import c10d
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.launch import free_port
from trtllm_compile.parallel.peer_all_reduce import PeerAllReduce, all_reduce_dtypes, bind_peer_all_reduce, why_nccl
from trtllm_compile.parallel.step_graph import build_sharded_step_graphs, place_constants
from trtllm_compile.runtime.step_graph import build_step_graph

BLOCK_SIZE = 4


class _ThreadReducer:
    """Stands in for PeerAllReduce on the CPU: the same binding, sums from a ThreadGroup."""

    def __init__(self, group: ThreadGroup, rank: int, group_name: str):
        self.group, self.rank, self.group_name = group, rank, group_name
        self.calls = self.fused_calls = 0

    def all_reduce(self, x: torch.Tensor, dtype=None) -> torch.Tensor:
        self.calls += 1
        return self.group.all_reduce(x, self.rank).to(dtype or x.dtype)

    def all_reduce_add_rms_norm(self, x, residual, weight, eps, unit_offset=False, dtype=None):
        self.fused_calls += 1
        return torch.ops.trtllm.add_rms_norm(self.all_reduce(x, dtype), residual, weight, eps, unit_offset)


def test_bound_graph_calls_the_reducer_for_every_all_reduce_and_keeps_the_logits():
    model = TINY_MODELS["llama"].build()
    layers = model.config.num_hidden_layers
    graphs = build_sharded_step_graphs(model, [TensorParallelConfig(rank, 2, "tp") for rank in range(2)])
    group = ThreadGroup(2)
    reducers = [_ThreadReducer(group, rank, "tp") for rank in range(2)]
    for step, reducer in zip(graphs, reducers, strict=True):
        gm = step.graph_module
        place_constants(gm, torch.device("cpu"))
        assert all_reduce_dtypes(gm) == {torch.float32}
        # vocab-parallel embedding, then attention out and MLP down, each feeding the next residual add + norm
        assert bind_peer_all_reduce(gm, reducer) == (1 + 2 * layers, 2 * layers)
        assert not any(is_op(n, c10d.all_reduce.default) for n in gm.graph.nodes)
        assert not any(is_op(n, torch.ops.trtllm.add_rms_norm.default) for n in gm.graph.nodes)
        waits = [n for n in gm.graph.nodes if is_op(n, c10d.wait_tensor.default)]
        assert [w.args[0].target for w in waits] == [c10d.all_gather_into_tensor.default]  # the LM head's gather
        emulate_collectives(gm, group, reducer.rank)

    reference = build_step_graph(model)
    prompt = [([5, 17, 200, 3, 9], 0)]
    caches = [
        torch.zeros(s.geometry.num_layers, 2, 4, BLOCK_SIZE, s.geometry.num_kv_heads, s.geometry.head_dim)
        for s in (reference, *graphs)
    ]
    expected = reference.graph_module(*step_inputs(prompt, caches[0], BLOCK_SIZE))[0]
    got = run_ranks(
        [
            lambda s=s, c=c: s.graph_module(*step_inputs(prompt, c, BLOCK_SIZE))[0]
            for s, c in zip(graphs, caches[1:], strict=True)
        ]
    )
    assert rel_err(got[0], expected) <= FP32_REL_TOL
    assert torch.equal(got[0], got[1])
    assert [(r.calls, r.fused_calls) for r in reducers] == [(1 + 2 * layers, 2 * layers)] * 2


def test_bound_bf16_graph_folds_the_rounding_of_its_fp32_sums_and_keeps_every_logit():
    """A bf16 graph's all-reduces sum fp32 and round after (passes/widen_partial_sums.py): the binding takes the
    rounding into the reducer's call, and the logits are those of the same graphs left on emulated collectives."""
    model = TINY_MODELS["llama"].build().bfloat16()
    layers = model.config.num_hidden_layers
    ranks = [TensorParallelConfig(rank, 2, "tp") for rank in range(2)]
    prompt = [([5, 17, 200, 3, 9], 0)]
    logits = []
    for bind in (False, True):
        graphs, group = build_sharded_step_graphs(model, ranks), ThreadGroup(2)
        for rank, step in enumerate(graphs):
            gm = step.graph_module
            place_constants(gm, torch.device("cpu"))
            if bind:
                casts = sum(is_op(n, torch.ops.aten._to_copy.default) for n in gm.graph.nodes)
                assert all_reduce_dtypes(gm) == {torch.float32}
                assert bind_peer_all_reduce(gm, _ThreadReducer(group, rank, "tp")) == (1 + 2 * layers, 2 * layers)
                # every rounding after a sum went into the reducer's call
                assert sum(is_op(n, torch.ops.aten._to_copy.default) for n in gm.graph.nodes) == casts - 1 - 2 * layers
            emulate_collectives(gm, group, rank)
        caches = [
            torch.zeros(
                s.geometry.num_layers, 2, 4, BLOCK_SIZE, s.geometry.num_kv_heads, s.geometry.head_dim
            ).bfloat16()
            for s in graphs
        ]
        inputs = [step_inputs(prompt, cache, BLOCK_SIZE) for cache in caches]
        calls = [lambda s=s, x=x: s.graph_module(*x)[0] for s, x in zip(graphs, inputs, strict=True)]
        logits.append(run_ranks(calls)[0])
    assert logits[0].dtype == torch.bfloat16 and torch.equal(logits[0], logits[1])


def test_binding_leaves_other_groups_to_nccl():
    model = TINY_MODELS["llama"].build()
    (step,) = build_sharded_step_graphs(model, [TensorParallelConfig(0, 2, "tp")])
    assert bind_peer_all_reduce(step.graph_module, _ThreadReducer(ThreadGroup(2), 0, "another")) == (0, 0)


def test_why_the_all_reduces_stay_on_nccl(monkeypatch):
    assert why_nccl({torch.bfloat16}, [0, 0]) is None
    assert why_nccl({torch.float32}, [2, 2]) is None  # processes that made the same groups before
    assert why_nccl({torch.float16}, [0, 0]) is None
    assert "graph ['torch.float64']" in why_nccl({torch.float64}, [0, 0])
    assert "graph ['torch.bfloat16', 'torch.float32']" in why_nccl({torch.bfloat16, torch.float32}, [0, 0])
    assert "earlier tensor-parallel group" in why_nccl({torch.bfloat16}, [1, 0])  # rank 0 reused, workers fresh
    monkeypatch.setenv("TRTLLM_PEER_ALL_REDUCE", "0")
    assert why_nccl({torch.bfloat16}, [0, 0]) == "TRTLLM_PEER_ALL_REDUCE=0"


# The fused kernel's norm sums the squares of a row in its own order (its layout), so its normalized output may
# differ from the norm kernel's by an ulp of fp32 before rounding; every other output must have NCCL's bits.
NORMED_TOL = {torch.bfloat16: (1e-2, 1e-2), torch.float16: (1e-3, 1e-3), torch.float32: (1e-5, 1e-5)}


def _same(got, expected) -> bool:
    """Sums (and the fused form's residual sums) bit for bit; normalized values within NORMED_TOL."""
    if isinstance(got, torch.Tensor):
        return torch.equal(got, expected)
    (normed, summed), (ref_normed, ref_summed) = got, expected
    atol, rtol = NORMED_TOL[normed.dtype]
    return torch.equal(summed, ref_summed) and torch.allclose(normed, ref_normed, atol=atol, rtol=rtol)


def _two_gpu_rank(rank: int, port: int, results) -> None:
    os.environ["NCCL_NVLS_ENABLE"], os.environ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "0", "1"
    from trtllm_compile.kernels import norm

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    group = dist.group.WORLD.group_name
    width = 1000
    try:
        checks = {}
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            reducer = PeerAllReduce(group, device, dtype, width, max_bytes=64 << 10)
            generator = torch.Generator(device).manual_seed(rank)
            weight = 1 + 0.1 * torch.randn(width, dtype=dtype, device=device, generator=torch.Generator(device))

            def nccl(t):
                return c10d.wait_tensor(c10d.all_reduce(t, "sum", group))

            def nccl_add_rms_norm(t, residual, weight=weight):
                return norm.add_rms_norm(nccl(t), residual, weight, 1e-5)

            def add_rms_norm(t, residual, weight=weight, reducer=reducer):
                return reducer.all_reduce_add_rms_norm(t, residual, weight, 1e-5)

            def chain(t, reduce, add_rms_norm):  # a step's pattern: reduce, add + norm, and again
                residual, normed = t, []
                for _ in range(6):
                    t = reduce(t) * 0.5
                    out, residual = add_rms_norm(t, residual)
                    normed.append(out)
                return t, (torch.stack(normed), residual)

            x = torch.randn(4, width, dtype=dtype, device=device, generator=generator)
            checks[f"{dtype} eager"] = reducer.takes(x) and _same(reducer.all_reduce(x), nccl(x))
            checks[f"{dtype} fused eager"] = _same(add_rms_norm(x, x), nccl_add_rms_norm(x, x))
            # Calls of 1 to max_rows rows, the same sequence on both ranks: rows that sat out some calls and
            # grids of every size, each checked against NCCL.
            sizes = torch.randint(1, reducer.rows.max_rows + 1, (100,), generator=torch.Generator().manual_seed(0))
            mixed = {"plain": True, "fused": True}
            for i, rows in enumerate(sizes.tolist()):
                t = torch.randn(rows, width, dtype=dtype, device=device, generator=generator)
                if i % 2:
                    mixed["fused"] &= _same(add_rms_norm(t, t), nccl_add_rms_norm(t, t))
                else:
                    mixed["plain"] &= _same(reducer.all_reduce(t), nccl(t))
            checks.update({f"{dtype} mixed sizes {kind}": ok for kind, ok in mixed.items()})
            static = x.clone()
            graph = torch.cuda.CUDAGraph()
            chain(static, reducer.all_reduce, add_rms_norm)  # warm-up outside the capture
            with torch.cuda.graph(graph):
                captured = chain(static, reducer.all_reduce, add_rms_norm)
            replays_match = True
            for _ in range(20):  # the same buffer slots reused back to back: a race would show as a wrong sum
                static.copy_(torch.randn(x.shape, dtype=dtype, device=device, generator=generator))
                graph.replay()
                expected = chain(static.clone(), nccl, nccl_add_rms_norm)
                replays_match &= _same(captured[0], expected[0]) and _same(captured[1], expected[1])
            checks[f"{dtype} graph"] = replays_match
            if dtype == torch.float32:  # a widened graph's sums (passes/widen_partial_sums.py): rounded to bf16
                half = torch.bfloat16
                residual, half_weight = x.to(half), weight.to(half)
                checks["fp32 sums rounded to bf16"] = _same(reducer.all_reduce(x, half), nccl(x).to(half))
                checks["fp32 sums rounded to bf16, fused"] = _same(
                    reducer.all_reduce_add_rms_norm(x, residual, half_weight, 1e-5, dtype=half),
                    norm.add_rms_norm(nccl(x).to(half), residual, half_weight, 1e-5),
                )
            big = torch.randn(40, width, dtype=dtype, device=device, generator=generator)  # over 64 KiB: NCCL
            checks[f"{dtype} big"] = not reducer.takes(big) and _same(reducer.all_reduce(big), nccl(big))
        results[rank] = checks
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_one_shot_all_reduce_matches_nccl_eagerly_and_in_cuda_graphs():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_gpu_rank, args=(free_port(), results), nprocs=2)
        checks = dict(results)
    for rank in range(2):
        failed = [name for name, ok in checks[rank].items() if not ok]
        assert checks[rank] and not failed, f"rank {rank}: {failed}"
