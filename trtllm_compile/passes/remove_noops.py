"""Drop nodes that do nothing at inference (same-dtype casts, aliases, detaches, eval-mode dropout, full slices,
same-shape views, products and quotients by one, concatenation with empty tensors, grad-mode and autocast markers)
and normalize negative dims.

Patterns are traced through the same cleanup, so each graph meets patterns of its own form: fp32 graphs lose
their no-op casts, low-precision graphs (where the casts are real) keep them.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from trtllm_compile.fx_utils import aten, same_shape, val
from trtllm_compile.passes.registry import Stage, register_pass

_IDENTITY_OPS = {aten.alias.default, aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default}
_CAST_OPS = {aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default}
_UNIT_SCALINGS = {aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar}
_MARKERS = {
    aten._assert_tensor_metadata.default,  # torch.export's dtype/device checks after casts
    torch._C._set_grad_enabled,
    torch.amp.autocast_mode._enter_autocast,
    torch.amp.autocast_mode._exit_autocast,
}


def _is_noop(node: torch.fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target in _IDENTITY_OPS:
        return True
    if node.target in (aten.dropout.default, aten.feature_dropout.default):
        return node.args[1] == 0.0 or not node.args[2]
    if node.target in (aten.slice.Tensor, aten.expand.default, aten.view.default, aten.reshape.default):
        return same_shape(val(node.args[0]), val(node)) and (node.target != aten.slice.Tensor or _step_one(node))
    if node.target in _CAST_OPS:
        return _same_dtype_and_device(node)
    if node.target in _UNIT_SCALINGS:  # x * 1 or x / 1 (HF's rotary `attention_scaling` of plain RoPE)
        factor = node.args[1]
        unit = isinstance(factor, int | float) and not isinstance(factor, bool) and factor == 1
        return unit and _same_dtype_and_device(node) and same_shape(val(node.args[0]), val(node))
    return False


def _same_dtype_and_device(node: torch.fx.Node) -> bool:
    source, result = val(node.args[0]), val(node)
    return (
        isinstance(source, torch.Tensor)
        and isinstance(result, torch.Tensor)
        and source.dtype == result.dtype
        and source.device == result.device
    )


def _step_one(node: torch.fx.Node) -> bool:
    return (node.args[4] if len(node.args) > 4 else node.kwargs.get("step", 1)) == 1


def _drop_empty_cat_inputs(node: torch.fx.Node) -> bool:
    """cat([empty, x], dim) -> x: an empty DynamicCache concatenated with the first keys/values."""
    tensors = node.args[0]
    kept = [t for t in tensors if not (isinstance(val(t), torch.Tensor) and statically_known_true(val(t).numel() == 0))]
    if len(kept) == len(tensors) or not kept:
        return False
    if len(kept) == 1 and same_shape(val(kept[0]), val(node)):
        node.replace_all_uses_with(kept[0])
    else:
        node.args = (kept, *node.args[1:])
    return True


# Ops whose dim arguments (by position) are normalized to non-negative, so `x.transpose(-1, -2)` and
# `x.transpose(2, 3)` reach the pattern matcher as one spelling.
_DIM_ARGS = {
    aten.transpose.int: (1, 2),
    aten.softmax.int: (1,),
    aten.slice.Tensor: (1,),
    aten.mean.dim: (1,),
    aten.unsqueeze.default: (1,),
    aten.split_with_sizes.default: (2,),
}


def _normalize_dims(node: torch.fx.Node) -> None:
    source = val(node.args[0]) if node.target != aten.unsqueeze.default else val(node)
    if not isinstance(source, torch.Tensor):
        return
    args = list(node.args)
    for i in _DIM_ARGS[node.target]:
        if i < len(args):
            dim = args[i]
            args[i] = [d % source.dim() for d in dim] if isinstance(dim, list | tuple) else dim % source.dim()
    if node.target == aten.transpose.int:
        args[1:3] = sorted(args[1:3])  # transpose is symmetric in its dims
    node.args = tuple(args)


def remove_noop_nodes(graph: torch.fx.Graph) -> int:
    """Remove no-ops and normalize dims; returns how many nodes were removed."""
    removed = 0
    # Markers first, last to first: an `_exit_autocast` uses its `_enter_autocast`, so the pair goes together.
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target in _MARKERS and not node.users:
            graph.erase_node(node)
            removed += 1
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target in _DIM_ARGS:
            _normalize_dims(node)
        if node.op == "call_function" and node.target == aten.cat.default and _drop_empty_cat_inputs(node):
            removed += 1
            continue
        if _is_noop(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            removed += 1
    return removed


@register_pass(Stage.CANONICALIZE)
def remove_noops(gm: torch.fx.GraphModule, config) -> int:
    """Remove inference no-ops (same-dtype casts, aliases, eval dropout, grad/autocast markers)."""
    return remove_noop_nodes(gm.graph)
