"""Rewrite GEMMs spelled as `addmm`/`mm` on flattened activations (GPT-2's Conv1D: `x.view(-1, K) @ W + b`)
into `aten.linear(x, W.T, b)`, so every later pass and converter handles one GEMM form. Frozen weights are
transposed once here, at compile time."""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, constant_of, insert_constant, is_op, sizes_equal, val
from trtllm_compile.passes.registry import Stage, register_pass


def _flattened_source(node) -> torch.fx.Node | None:
    """x if `node` is x.view(-1, K) (flattening all leading dims), else None."""
    if not is_op(node, aten.view.default, aten.reshape.default):
        return None
    source = node.args[0]
    if val(source).dim() < 2 or val(node).dim() != 2 or not sizes_equal(val(node).shape[-1:], val(source).shape[-1:]):
        return None
    return source


def _transposed_weight(gm, weight: torch.fx.Node) -> torch.fx.Node:
    tensor = constant_of(gm, weight)
    if tensor is not None:
        return insert_constant(gm, tensor.t().contiguous(), f"{weight.target}_t")
    with gm.graph.inserting_after(weight):
        transposed = gm.graph.call_function(aten.t.default, (weight,))
    transposed.meta["val"] = val(weight).t()
    return transposed


@register_pass(Stage.CANONICALIZE)
def canonicalize_linear(gm: torch.fx.GraphModule, config) -> int:
    """view(x, [-1, K]) -> addmm(b, ., W) | mm(., W) -> view(., [..., N])  =>  aten.linear(x, W.T, b)."""
    count = 0
    for node in list(gm.graph.nodes):
        if is_op(node, aten.addmm.default) and len(node.args) == 3 and not node.kwargs:
            bias, flat, weight = node.args
        elif is_op(node, aten.mm.default):
            (flat, weight), bias = node.args, None
        else:
            continue
        source = _flattened_source(flat)
        if source is None or len(node.users) != 1 or val(weight).dim() != 2:
            continue
        unflatten = next(iter(node.users))
        if not is_op(unflatten, aten.view.default, aten.reshape.default):
            continue
        if not sizes_equal(val(unflatten).shape[:-1], val(source).shape[:-1]):
            continue
        weight_t = _transposed_weight(gm, weight)
        with gm.graph.inserting_before(unflatten):
            linear = gm.graph.call_function(aten.linear.default, (source, weight_t, bias))
        linear.meta["val"] = val(unflatten)
        unflatten.replace_all_uses_with(linear)
        count += 1
    return count
