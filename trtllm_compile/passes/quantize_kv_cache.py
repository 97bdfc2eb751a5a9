"""FP8 KV cache on a graph captured from an unquantized model: round K and V through FP8 before attention.

trtllm::attention(q, k, v, ...)  ->  trtllm::attention(q, fp8_qdq(k, k_scale), fp8_qdq(v, v_scale), ...)

The scales come from the calibration's K/V ranges of the attention module, found by walking back from the
attention's V to the GEMM producing it (its weight names the layer). A KV-cache target replaces the
quantize-dequantize pair with an FP8 cache write and read, keeping the scales (insert_paged_attention stores
the paged cache in FP8). Attention whose inputs already pass through `fp8_qdq` (a model quantized with
`kv_cache="fp8"`) is left alone.
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, constant_of, insert_constant, is_op
from trtllm_compile.passes.quantize_linear import LinearNames
from trtllm_compile.passes.registry import Stage, register_pass
from trtllm_compile.quantization.kv_cache import kv_scales

logger = logging.getLogger(__name__)

trtllm = torch.ops.trtllm
_MAX_HOPS = 12  # V comes from its GEMM through a slice, view, transpose, maybe a repeat


def _layer_of(gm, node: torch.fx.Node, names: LinearNames) -> str | None:
    """The attention module of the GEMM producing `node` (a plain linear, or one quantize_linear rewrote)."""
    frontier = [node]
    for _ in range(_MAX_HOPS):
        frontier = [a for n in frontier for a in n.all_input_nodes]
        for candidate in frontier:
            if "quantization" in candidate.meta:
                return candidate.meta["quantization"]["modules"][0].rpartition(".")[0]
            if is_op(candidate, aten.linear.default) and constant_of(gm, candidate.args[1]) is not None:
                parts = names.of(candidate.args[1])
                return parts[0].rpartition(".")[0] if parts else None
        if not frontier:
            return None
    return None


@register_pass(Stage.QUANTIZE)
def quantize_kv_cache(gm: torch.fx.GraphModule, config) -> int:
    """trtllm::attention's K and V -> trtllm::fp8_qdq(K, k_scale), trtllm::fp8_qdq(V, v_scale) (calibrated)."""
    qconfig = getattr(config, "quantization", None)
    if qconfig is None or qconfig.kv_cache != "fp8":
        return 0
    if qconfig.calibration is None or not qconfig.calibration.kv_amax:
        raise ValueError("kv_cache='fp8' needs K/V ranges: calibrate(model, ..., kv_cache=True) and attach it")
    names = LinearNames(qconfig.calibration)
    count = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, trtllm.attention.default):
            continue
        k, v = node.args[1], node.args[2]
        if is_op(k, trtllm.fp8_qdq.default) or is_op(v, trtllm.fp8_qdq.default):
            continue
        layer = _layer_of(gm, v, names)
        if layer not in qconfig.calibration.kv_amax:
            logger.warning("%s: no calibrated K/V range found for its layer; K/V left unquantized", node.name)
            continue
        for index, (arg, scale) in enumerate(
            zip((k, v), kv_scales(*qconfig.calibration.kv_amax[layer]), strict=True), start=1
        ):
            device = getattr(arg.meta.get("val"), "device", None)  # a CUDA kernel reads the scale on the GPU
            scale = scale.to(device) if device is not None else scale
            scale_node = insert_constant(gm, scale, f"{layer}_{'kv'[index - 1]}_scale")
            with gm.graph.inserting_before(node):
                rounded = gm.graph.call_function(trtllm.fp8_qdq.default, (arg, scale_node))
            rounded.meta["val"] = arg.meta.get("val")
            node.update_arg(index, rounded)
        count += 1
    return count
