"""The runtime's step graph: the whole model captured once with a flat token axis, fused, with a paged KV cache.

One step feeds all scheduled tokens of all sequences as one row (`input_ids` [1, T], `position_ids` [1, T]),
so prefills and decodes share a step and a GEMM. Inputs after the model's own are the paged-attention
metadata (see passes/insert_paged_attention.py) and `logits_indices` (the rows whose logits are sampled).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch
import torch.fx

from trtllm_compile.capture import CausalLMStep, export_model
from trtllm_compile.config import CompileConfig
from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.passes import run_passes
from trtllm_compile.report import CompileReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CacheGeometry:
    """What a KV cache for this graph holds per block, read from the graph's attention nodes (dtype
    float8_e4m3fn when they store K/V in FP8 with calibrated scales)."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    @classmethod
    def of(cls, paged: list[torch.fx.Node]) -> CacheGeometry:
        """The cache of these paged attentions: K's heads and size, and FP8 when they pass K/V scales."""
        k = val(paged[0].args[1])
        fp8 = paged[0].kwargs.get("k_scale") is not None  # insert_paged_attention scales every layer or none
        return cls(len(paged), k.shape[1], k.shape[3], torch.float8_e4m3fn if fp8 else k.dtype)


@dataclass
class StepGraph:
    graph_module: torch.fx.GraphModule
    geometry: CacheGeometry
    report: CompileReport


def sliding_windows(config, num_layers: int) -> tuple[int, ...]:
    """Each layer's sliding window from a Hugging Face config (-1: full attention)."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return (-1,) * num_layers
    if layer_types:
        return tuple(window if kind == "sliding_attention" else -1 for kind in layer_types)
    return (window,) * num_layers


def build_step_graph(model: torch.nn.Module, config: CompileConfig | None = None) -> StepGraph:
    """Export `model` with a dynamic token count, run every pass stage, and check attention went paged."""
    return fuse_step_graph(export_step_graph(model), model.config, config)


def export_step_graph(model: torch.nn.Module) -> torch.fx.GraphModule:
    """`model` as one ATen graph of (input_ids [1, T], position_ids [1, T]) -> logits, T dynamic."""
    device = next(model.parameters()).device
    # Two distinct example tensors: export would treat one tensor passed twice as aliased inputs.
    input_ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    position_ids = torch.arange(2, device=device)[None]
    # Dim.DYNAMIC, not a named range: Hugging Face's mask code adds always-true guards on the token count
    # (alignment padding on CUDA) that a strict range rejects; the masks are dead after the cache pass anyway.
    tokens = torch.export.Dim.DYNAMIC
    captured = export_model(CausalLMStep(model), (input_ids, position_ids), dynamic_shapes=({1: tokens}, {1: tokens}))
    return captured.graph_module


def fuse_step_graph(gm: torch.fx.GraphModule, model_config, config: CompileConfig | None = None) -> StepGraph:
    """Run every pass stage on an exported step graph (in place) and check that every attention layer went paged."""
    num_layers = getattr(model_config, "num_hidden_layers", None) or model_config.n_layer
    config = dataclasses.replace(config or CompileConfig(), sliding_windows=sliding_windows(model_config, num_layers))
    results = run_passes(gm, config, skip=config.disable_passes)
    report = CompileReport.from_graph(gm, results)
    paged = [n for n in gm.graph.nodes if is_op(n, torch.ops.trtllm.paged_attention.default)]
    unfused = [f for f in report.fallbacks if f.family == "attention"]
    if unfused or len(paged) != num_layers:
        raise NotImplementedError(
            f"the paged-KV runtime needs every attention layer fused, but {len(paged)} of {num_layers} were "
            f"({len(unfused)} attention node(s) left in PyTorch: {sorted({f.reason for f in unfused})}). "
            "Use torch.compile(model, backend='trtllm') for this model, or add its attention pattern in "
            "trtllm_compile/passes/match_attention.py"
        )
    geometry = CacheGeometry.of(paged)
    logger.info("step graph: %s", report.summary())
    return StepGraph(gm, geometry, report)
