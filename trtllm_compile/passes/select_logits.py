"""Compute logits only where they are sampled: the LM head reads `hidden[:, logits_indices]`.

A prefill of T tokens needs the logits of its last token only; skipping the rest saves a [T, vocab] GEMM.
"""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, lm_head, val
from trtllm_compile.passes.registry import Stage, register_pass


@register_pass(Stage.CACHE)
def select_logits(gm: torch.fx.GraphModule, config) -> int:
    """linear(hidden, lm_head) as the graph output -> linear(hidden[:, logits_indices], lm_head) (or a quantized
    linear: the rows it quantizes per token or per tensor are selected before it just the same)."""
    head = lm_head(gm)
    if head is None:
        raise ValueError("the step graph's logits do not come from an LM head GEMM")
    last_input = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last_input):
        indices = gm.graph.placeholder("logits_indices")
    hidden = head.args[0]
    with gm.graph.inserting_before(head):
        selected = gm.graph.call_function(aten.index_select.default, (hidden, 1, indices))
    hidden_val = val(hidden)
    selected.meta["val"] = hidden_val.new_empty(hidden_val.shape[0], 1, hidden_val.shape[-1])
    head.replace_input_with(hidden, selected)
    return 1
