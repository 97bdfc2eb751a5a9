"""One rank's step graph: the runtime's step graph with the rank's `TensorParallelConfig` reaching the SHARD
pass, then the graph's constants moved to the rank's device."""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.fx

from trtllm_compile.config import CompileConfig
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.runtime.step_graph import StepGraph, export_step_graph, fuse_step_graph


def build_sharded_step_graph(
    model: torch.nn.Module, tp: TensorParallelConfig, config: CompileConfig | None = None
) -> StepGraph:
    """The step graph of rank `tp.rank`: exported where the model is, every pass stage run, SHARD included."""
    return build_sharded_step_graphs(model, [tp], config)[0]


def build_sharded_step_graphs(
    model: torch.nn.Module, ranks: list[TensorParallelConfig], config: CompileConfig | None = None
) -> list[StepGraph]:
    """Step graphs of several ranks from one export (each rank's passes run on a copy): for one-process tests."""
    exported = export_step_graph(model)
    config = config or CompileConfig()
    graphs = []
    for i, tp in enumerate(ranks):
        gm = exported if i == len(ranks) - 1 else copy.deepcopy(exported)
        graphs.append(fuse_step_graph(gm, model.config, dataclasses.replace(config, tensor_parallel=tp)))
    return graphs


def place_constants(gm: torch.fx.GraphModule, device: torch.device) -> None:
    """Move the constants the graph reads (buffers, see fx_utils.add_constant) to `device` and drop the others
    (the unfused and unsharded weights export and fusion left behind), so the device holds this rank's shards.
    Device arguments the export recorded (where it traced: `inv_freq.to(x.device, float32)` of a bf16 model's
    RoPE) are pointed at `device` too."""
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name in list(gm._buffers):
        if name not in used:
            del gm._buffers[name]
        elif gm._buffers[name] is not None:
            gm._buffers[name] = gm._buffers[name].to(device)
    for node in gm.graph.nodes:
        if node.op == "call_function":
            node.args = tuple(device if isinstance(a, torch.device) else a for a in node.args)
            node.kwargs = {k: device if isinstance(v, torch.device) else v for k, v in node.kwargs.items()}
    gm.recompile()
