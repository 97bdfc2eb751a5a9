"""Give every attention a paged KV cache: `trtllm.attention` -> `trtllm.paged_attention`.

The step graph then takes the cache ([layers, 2, num_blocks, block_size, Hkv, D]) and the step's attention
metadata as inputs. The masks Hugging Face built for the stateless graph lose their last user and are removed
with the dead code: causality and sliding windows come from the metadata and `config.sliding_windows`.

An FP8 KV cache: when every attention's K and V arrive as `fp8_qdq(k, k_scale)` / `fp8_qdq(v, v_scale)` (from
quantize_kv_cache, or a model quantized with kv_cache="fp8"), the quantize-dequantize is dropped and
paged_attention gets the raw K/V and both scales as `k_scale` / `v_scale`: it stores FP8 and dequantizes on
read, which is the same rounding. The cache is then float8_e4m3fn (runtime/step_graph.py reads it from there).
"""

from __future__ import annotations

import logging

import torch
import torch.fx

from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.passes.registry import Stage, register_pass

logger = logging.getLogger(__name__)

# Step inputs the pass adds, in order after the model's own inputs.
ATTENTION_INPUTS = ("kv_cache", "slot_mapping", "block_tables", "context_lens", "host_query_start_loc")


def _add_inputs(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    nodes = {}
    for name in ATTENTION_INPUTS:
        with gm.graph.inserting_after(last):
            last = nodes[name] = gm.graph.placeholder(name)
    return nodes


def _fp8_kv(node: torch.fx.Node) -> tuple[torch.fx.Node, torch.fx.Node, torch.fx.Node, torch.fx.Node] | None:
    """(k, k_scale, v, v_scale) when the attention's K and V are both per-tensor `fp8_qdq`s of the same dtype."""
    k, v = node.args[1], node.args[2]
    if not all(is_op(x, torch.ops.trtllm.fp8_qdq.default) for x in (k, v)):
        return None
    (k_raw, k_scale), (v_raw, v_scale) = k.args, v.args
    q_dtype = getattr(val(node.args[0]), "dtype", None)
    for raw, scale in ((k_raw, k_scale), (v_raw, v_scale)):
        if getattr(val(scale), "numel", lambda: 0)() != 1 or getattr(val(raw), "dtype", None) != q_dtype:
            return None
    return k_raw, k_scale, v_raw, v_scale


@register_pass(Stage.CACHE)
def insert_paged_attention(gm: torch.fx.GraphModule, config) -> int:
    """trtllm.attention(q, k, v, mask, ...) -> trtllm.paged_attention(q, k, v, kv_cache, metadata..., layer)."""
    attentions = [n for n in gm.graph.nodes if is_op(n, torch.ops.trtllm.attention.default)]
    if not attentions:
        return 0
    windows = config.sliding_windows or (-1,) * len(attentions)
    if len(windows) != len(attentions):
        raise ValueError(f"the graph has {len(attentions)} attention layers but {len(windows)} sliding windows")
    fp8 = [_fp8_kv(node) for node in attentions]
    if any(fp8) and not all(fp8):  # one cache tensor, one dtype: FP8 only if every layer's K/V are
        logger.warning(
            "%d of %d attention layers round K/V through FP8: the KV cache stays in the model dtype (the "
            "rounding is simulated); calibrate K/V ranges for every layer to store it in FP8",
            sum(map(bool, fp8)),
            len(fp8),
        )
    inputs = _add_inputs(gm)
    for layer, (node, window) in enumerate(zip(attentions, windows, strict=True)):
        q, k, v, _mask, scale = node.args[:5]
        softcap = node.args[7] if len(node.args) > 7 else 0.0
        metadata = [inputs[name] for name in ATTENTION_INPUTS]
        scales = {}
        if all(fp8):
            k, k_scale, v, v_scale = fp8[layer]
            scales = {"k_scale": k_scale, "v_scale": v_scale}
        with gm.graph.inserting_before(node):
            paged = gm.graph.call_function(
                torch.ops.trtllm.paged_attention.default, (q, k, v, *metadata, layer, scale, window, softcap), scales
            )
        paged.meta["val"] = node.meta.get("val")
        qdq = node.args[1:3]
        node.replace_all_uses_with(paged)
        gm.graph.erase_node(node)
        for rounded in dict.fromkeys(qdq) if scales else ():
            if not rounded.users:
                gm.graph.erase_node(rounded)
    return len(attentions)
