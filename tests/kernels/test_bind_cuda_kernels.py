"""The runtime's step graph on a GPU calls the CUDA kernels directly: every trtllm op that has one is bound."""

from __future__ import annotations

import pytest
import torch
from support import generating_model

from trtllm_compile.runtime.step_graph import build_step_graph


def _trtllm_ops(gm: torch.fx.GraphModule) -> list[str]:
    return [
        n.target.name()
        for n in gm.graph.nodes
        if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "trtllm"
    ]


def test_step_graph_ops_bound_to_their_cuda_kernels():
    pytest.importorskip("triton", reason="the Triton kernels need triton (pip install triton)")
    from trtllm_compile.kernels import CUDA_KERNELS, bind_cuda_kernels, register_cuda_kernels

    assert register_cuda_kernels()
    gm = build_step_graph(generating_model("llama")).graph_module
    before = _trtllm_ops(gm)
    with_kernels = [name for name in before if name in CUDA_KERNELS]
    # (Llama's RoPE is folded into paged attention: passes/fold_rope_into_paged_attention.py)
    assert {"trtllm::paged_attention", "trtllm::add_rms_norm", "trtllm::mlp_activation"} <= set(with_kernels)
    assert bind_cuda_kernels(gm) == len(with_kernels)
    assert _trtllm_ops(gm) == [name for name in before if name not in CUDA_KERNELS]
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert {CUDA_KERNELS[name] for name in with_kernels} <= targets
