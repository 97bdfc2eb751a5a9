"""Lower the GEMMs of frozen half-precision weights to `trtllm::linear`, whose CUDA kernel runs decode-sized
inputs (M <= 16 rows) on a Triton GEMV and the rest on cuBLAS.

aten.linear(x, W_frozen, b)  ->  trtllm.linear(x, W_frozen, b)

A LOWER pass: it runs in the runtime's step graph only (not in torch.compile graphs, see `GRAPH_STAGES`), after
quantize_linear has taken the GEMMs it quantizes and select_logits has narrowed the LM head. fp32 weights stay
`aten.linear`: the GEMV has no fp32 path, so lowering them would only add a custom-op call.
"""

from __future__ import annotations

import torch
import torch.fx

import trtllm_compile.ops.linear  # noqa: F401  (registers torch.ops.trtllm.linear)
from trtllm_compile.fx_utils import aten, constant_of, is_op
from trtllm_compile.passes.registry import Stage, register_pass

LOWERED_DTYPES = (torch.float16, torch.bfloat16)


@register_pass(Stage.LOWER)
def lower_linear(gm: torch.fx.GraphModule, config) -> int:
    """aten.linear(x, W, b) with a frozen fp16/bf16 W -> trtllm.linear(x, W, b) (GEMV at M <= 16 on CUDA)."""
    count = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, aten.linear.default):
            continue
        weight = constant_of(gm, node.args[1])
        if weight is None or weight.dtype not in LOWERED_DTYPES:
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        with gm.graph.inserting_before(node):
            lowered = gm.graph.call_function(torch.ops.trtllm.linear.default, (node.args[0], node.args[1], bias))
        lowered.meta.update(node.meta)
        node.replace_all_uses_with(lowered)
        gm.graph.erase_node(node)
        count += 1
    return count
