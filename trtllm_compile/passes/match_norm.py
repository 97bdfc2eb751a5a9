"""Match RMSNorm (Llama and Gemma forms) and LayerNorm into `trtllm.rms_norm` / `trtllm.layer_norm`."""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten
from trtllm_compile.passes.patterns import PatternSet, pattern_set
from trtllm_compile.passes.registry import Stage, register_pass


def rms_norm_llama(x, weight, eps):
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def rms_norm_gemma(x, weight, eps):
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (h * (1.0 + weight.float())).type_as(x)


@pattern_set("rms_norm")
def _rms_norm_patterns(patterns: PatternSet) -> None:
    def inputs(dtype):
        return [torch.randn(2, 3, 8, dtype=dtype), torch.randn(8, dtype=dtype)]

    patterns.add(
        rms_norm_llama,
        lambda x, weight, eps: torch.ops.trtllm.rms_norm(x, weight, eps, False),
        inputs,
        scalars={"eps": 1e-6},
    )
    patterns.add(
        rms_norm_gemma,
        lambda x, weight, eps: torch.ops.trtllm.rms_norm(x, weight, eps, True),
        inputs,
        scalars={"eps": 1e-6},
    )


@register_pass(Stage.MATCH)
def match_rms_norm(gm: torch.fx.GraphModule, config) -> int:
    """RMSNorm subgraphs (x * rsqrt(mean(x^2) + eps) * w, and Gemma's (1 + w)) -> trtllm.rms_norm."""
    return _rms_norm_patterns.apply(gm)


@register_pass(Stage.MATCH)
def match_layer_norm(gm: torch.fx.GraphModule, config) -> int:
    """aten.layer_norm over the last dim -> trtllm.layer_norm."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.target != aten.layer_norm.default:
            continue
        names = ("x", "shape", "weight", "bias", "eps")
        args = {"weight": None, "bias": None, "eps": 1e-5} | dict(zip(names, node.args, strict=False)) | node.kwargs
        x, shape, weight, bias, eps = (args[name] for name in names)
        if len(shape) != 1:
            continue
        with gm.graph.inserting_before(node):
            fused = gm.graph.call_function(torch.ops.trtllm.layer_norm.default, (x, weight, bias, eps))
        fused.meta.update(node.meta)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
        count += 1
    return count
