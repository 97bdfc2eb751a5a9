"""Give every attention a paged KV cache: `trtllm.attention` -> `trtllm.paged_attention`.

The step graph then takes the cache ([layers, 2, num_blocks, block_size, Hkv, D]) and the step's attention
metadata as inputs. The masks Hugging Face built for the stateless graph lose their last user and are removed
with the dead code: causality and sliding windows come from the metadata and `config.sliding_windows`.
"""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import is_op
from trtllm_compile.passes.registry import Stage, register_pass

# Step inputs the pass adds, in order after the model's own inputs.
ATTENTION_INPUTS = ("kv_cache", "slot_mapping", "block_tables", "context_lens", "host_query_start_loc")


def _add_inputs(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    nodes = {}
    for name in ATTENTION_INPUTS:
        with gm.graph.inserting_after(last):
            last = nodes[name] = gm.graph.placeholder(name)
    return nodes


@register_pass(Stage.CACHE)
def insert_paged_attention(gm: torch.fx.GraphModule, config) -> int:
    """trtllm.attention(q, k, v, mask, ...) -> trtllm.paged_attention(q, k, v, kv_cache, metadata..., layer)."""
    attentions = [n for n in gm.graph.nodes if is_op(n, torch.ops.trtllm.attention.default)]
    if not attentions:
        return 0
    windows = config.sliding_windows or (-1,) * len(attentions)
    if len(windows) != len(attentions):
        raise ValueError(f"the graph has {len(attentions)} attention layers but {len(windows)} sliding windows")
    inputs = _add_inputs(gm)
    for layer, (node, window) in enumerate(zip(attentions, windows, strict=True)):
        q, k, v, _mask, scale = node.args[:5]
        softcap = node.args[7] if len(node.args) > 7 else 0.0
        metadata = [inputs[name] for name in ATTENTION_INPUTS]
        with gm.graph.inserting_before(node):
            paged = gm.graph.call_function(
                torch.ops.trtllm.paged_attention.default, (q, k, v, *metadata, layer, scale, window, softcap)
            )
        paged.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(paged)
        gm.graph.erase_node(node)
    return len(attentions)
