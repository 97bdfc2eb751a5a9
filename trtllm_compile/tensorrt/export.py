"""Capture the step graph of a Hugging Face causal LM (prefill and decode engines) for the TensorRT target.

The model is exported without a cache (input_ids [B, S], position_ids [B, S] -> logits) with an attention function
of ours registered in transformers' AttentionInterface: it emits `trtllm.attention(q, k, v, None, scale,
is_causal=True, sliding_window, softcap)` directly, so no mask tensor is materialized (TensorRT's attention layer
takes causality, key lengths and windows, not an O(S^2) mask input). Then the canonicalize/match/fuse passes run as
for every target, and the CACHE-stage pass `insert_kv_cache_tensorrt` adds the explicit KV cache of each step.
One graph, exported once, serves both steps: decode is the same graph with the token count fixed to 1.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
import torch.fx

from trtllm_compile import ops  # noqa: F401  (registers the trtllm ops)
from trtllm_compile.capture import CausalLMStep, export_model
from trtllm_compile.config import CompileConfig
from trtllm_compile.parallel.collectives import collective_nodes
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.passes import Stage, registered_passes, run_passes
from trtllm_compile.passes import insert_kv_cache_tensorrt as kv_cache_pass
from trtllm_compile.quantization.config import QuantConfig
from trtllm_compile.report import CompileReport

logger = logging.getLogger(__name__)

ATTN_IMPLEMENTATION = "trtllm_tensorrt"
FUSION_STAGES = {Stage.CANONICALIZE, Stage.MATCH, Stage.FUSE}


def _fused_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' attention-function signature; q/k/v are [B, H, S, D] with GQA's fewer k/v heads."""
    if attention_mask is not None or not getattr(module, "is_causal", True):
        raise ValueError("the TensorRT export builds causal decoder attention itself and expects no mask")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    sliding_window = kwargs.get("sliding_window") or -1
    softcap = kwargs.get("softcap") or 0.0
    out = torch.ops.trtllm.attention(query, key, value, None, scale, True, sliding_window, softcap)
    # No .contiguous(): TensorRT has no layouts, and the SHARD pass traces the output to o_proj through layout ops
    return out.transpose(1, 2), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    # Registered as an attention function but not as a mask function: transformers then builds no mask at all.
    AttentionInterface.register(ATTN_IMPLEMENTATION, _fused_attention)


@dataclass(frozen=True)
class KVCacheConfig:
    """What `insert_kv_cache_tensorrt` reads from its `config` argument: the cache capacity in tokens."""

    kv_cache_max_seq_len: int


@dataclass
class StepGraph:
    graph_module: torch.fx.GraphModule
    report: CompileReport  # what fused, taken before the cache pass turns attention into cached attention

    @property
    def batch_symbol(self) -> str:
        return str(self._input_ids().shape[0])

    @property
    def token_symbol(self) -> str:
        """The symbolic token count (input_ids dim 1): decode fixes it to 1."""
        return str(self._input_ids().shape[1])

    def _input_ids(self):
        return next(n for n in self.graph_module.graph.nodes if n.name == "input_ids").meta["val"]


def prepare_model(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A copy of `model` in `dtype` that uses our attention function (the caller's model is left untouched)."""
    _register_attention()
    model = copy.deepcopy(model).to(dtype).eval()
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    for module in model.modules():  # sub-configs (e.g. a text config) dispatch on their own copy of the field
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "_attn_implementation"):
            config._attn_implementation = ATTN_IMPLEMENTATION
    return model


def _cache_passes_to_skip() -> frozenset[str]:
    """Other targets' CACHE-stage passes: only ours runs here."""
    return frozenset(
        s.name for s in registered_passes({Stage.CACHE}) if s.name != kv_cache_pass.__name__.split(".")[-1]
    )


def export_step_graph(
    model: torch.nn.Module,
    dtype: torch.dtype,
    max_batch_size: int,
    max_seq_len: int,
    max_num_tokens: int,
    with_kv_cache: bool = True,
    quantization: QuantConfig | None = None,
    tensor_parallel: TensorParallelConfig | None = None,
) -> StepGraph:
    """The step graph of `model` in `dtype`: batch and token count dynamic, KV cache of `max_seq_len` tokens.

    One graph serves both engines: prefill is it with up to `max_num_tokens` tokens, decode is it specialized to
    one token (`StepGraph.token_symbol` -> 1) when converted. A calibrated `quantization` also runs the QUANTIZE
    passes (quantized GEMMs, FP8 K/V round trip) on the fused graph, as the compile options do for the backend.
    `tensor_parallel` runs the SHARD pass for that rank; its collectives carry the config for the converters.
    """
    prepared = prepare_model(model, dtype)
    batch_dim = torch.export.Dim("batch", min=1, max=max_batch_size)
    seq_dim = torch.export.Dim("seq", min=1, max=max_num_tokens)
    batch, seq = min(2, max_batch_size), min(4, max_num_tokens)
    device = next(prepared.parameters()).device
    input_ids = torch.randint(0, prepared.config.vocab_size, (batch, seq), device=device)
    position_ids = torch.arange(seq, device=device).expand(batch, seq).contiguous()
    dynamic = ({0: batch_dim, 1: seq_dim}, {0: batch_dim, 1: seq_dim})
    captured = export_model(CausalLMStep(prepared), (input_ids, position_ids), dynamic_shapes=dynamic)
    gm = captured.graph_module
    _drop_asserts(gm)  # before matching: an assert is one more user that would pin an intermediate node
    # Attention is already fused (our attention function emits trtllm.attention): skip tracing its patterns.
    stages, config = FUSION_STAGES, None
    if quantization is not None:
        stages, config = FUSION_STAGES | {Stage.QUANTIZE}, CompileConfig(quantization=quantization)
    results = run_passes(gm, config, stages=stages, skip=frozenset({"match_attention"}))
    report = CompileReport.from_graph(gm, results)
    if tensor_parallel is not None:
        report.passes += run_passes(gm, CompileConfig(tensor_parallel=tensor_parallel), stages={Stage.SHARD})
        for node in collective_nodes(gm):
            node.meta["tensor_parallel_group"] = tensor_parallel  # the group's ranks, for the TensorRT converters
    if with_kv_cache:
        report.passes += run_passes(gm, KVCacheConfig(max_seq_len), stages={Stage.CACHE}, skip=_cache_passes_to_skip())
    return StepGraph(gm, report)


def _drop_asserts(gm: torch.fx.GraphModule) -> None:
    """torch.export's metadata asserts check tracing-time facts; an engine has no use for them."""
    aten = torch.ops.aten
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten._assert_tensor_metadata.default:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
