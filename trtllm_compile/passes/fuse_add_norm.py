"""Fuse the residual add into the RMSNorm that follows it: one kernel reads both inputs once and writes the
new residual and its normalized value."""

from __future__ import annotations

import operator

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, is_op, same_shape, val
from trtllm_compile.passes.registry import Stage, register_pass


@register_pass(Stage.FUSE)
def fuse_add_rms_norm(gm: torch.fx.GraphModule, config) -> int:
    """h = a + b; rms_norm(h) -> add_rms_norm(a, b) returning (normed, h)."""
    count = 0
    position = {node: i for i, node in enumerate(gm.graph.nodes)}
    for norm in list(gm.graph.nodes):
        if not is_op(norm, torch.ops.trtllm.rms_norm.default):
            continue
        add = norm.args[0]
        if not is_op(add, aten.add.Tensor) or len(add.args) != 2 or add.kwargs:
            continue
        a, b = add.args
        if not (isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)):
            continue
        if not (same_shape(val(a), val(add)) and same_shape(val(b), val(add))) or val(a).dtype != val(b).dtype:
            continue
        weight = norm.args[1]
        if isinstance(weight, torch.fx.Node) and position[weight] > position[add]:
            if weight.op != "get_attr":
                continue  # a computed weight defined after the sum: leave this pair unfused
            add.prepend(weight)  # constants have no inputs and may move up
        # At the add, not the norm: users of the sum between the two must still see it defined.
        with gm.graph.inserting_after(add):
            fused = gm.graph.call_function(torch.ops.trtllm.add_rms_norm.default, (a, b, *norm.args[1:]))
        with gm.graph.inserting_after(fused):
            summed = gm.graph.call_function(operator.getitem, (fused, 1))
        with gm.graph.inserting_after(summed):
            normed = gm.graph.call_function(operator.getitem, (fused, 0))
        fused.meta["val"] = (val(norm), val(add))
        normed.meta["val"], summed.meta["val"] = val(norm), val(add)
        norm.replace_all_uses_with(normed)
        add.replace_all_uses_with(summed)
        gm.graph.erase_node(norm)
        count += 1
    return count
