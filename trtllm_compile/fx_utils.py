"""Small helpers over torch.fx shared by capture, passes and targets."""

from __future__ import annotations

import sys

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from trtllm_compile.ops.quant import QUANTIZED_LINEARS

aten = torch.ops.aten


def constant_of(gm: torch.fx.GraphModule, node: object) -> torch.Tensor | None:
    """The tensor behind a `get_attr` node (a frozen weight or constant), else None."""
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = gm
    for part in node.target.split("."):
        value = getattr(value, part, None)
    return value if isinstance(value, torch.Tensor) else None


def add_constant(gm: torch.fx.GraphModule, tensor: torch.Tensor, name_hint: str) -> str:
    """Attach `tensor` to `gm` as a non-persistent buffer under a fresh name and return that name."""
    base = "".join(c if c.isalnum() else "_" for c in name_hint).strip("_") or "const"
    name, i = base, 0
    while hasattr(gm, name):
        i += 1
        name = f"{base}_{i}"
    gm.register_buffer(name, tensor.detach(), persistent=False)
    return name


def insert_constant(gm: torch.fx.GraphModule, tensor: torch.Tensor, name_hint: str) -> torch.fx.Node:
    """A `get_attr` node for a new constant, placed after the graph's placeholders."""
    name = add_constant(gm, tensor, name_hint)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    anchor = placeholders[-1] if placeholders else next(iter(gm.graph.nodes))
    with gm.graph.inserting_after(anchor) if placeholders else gm.graph.inserting_before(anchor):
        node = gm.graph.get_attr(name)
    node.meta["val"] = tensor
    return node


def val(node: object):
    """The traced (fake) value of a node, or the literal itself."""
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else node


def is_op(node: object, *targets) -> bool:
    """A call of one of `targets`, also once bound to an implementation (`ops.library.bind_calls`)."""
    if not isinstance(node, torch.fx.Node) or node.op != "call_function":
        return False
    return node.target in targets or node.meta.get("bound_op") in targets


_SLICE_DEFAULTS = (0, None, None, 1)  # aten.slice.Tensor's dim, start, end, step


def last_dim_slice(node: object) -> tuple[int, int] | None:
    """(start, end), end clamped to the size, when `node` slices the last dim of its input with step 1."""
    if not is_op(node, aten.slice.Tensor) or node.kwargs:
        return None
    source = node.args[0]
    dim, start, end, step = (*node.args[1:], *_SLICE_DEFAULTS[len(node.args) - 1 :])
    if dim not in (-1, val(source).dim() - 1) or step != 1:
        return None
    return start or 0, min(sys.maxsize if end is None else end, val(source).shape[-1])


def op_name(node: torch.fx.Node) -> str:
    target = node.target
    if isinstance(target, torch._ops.OpOverload):
        return f"{target.namespace}.{target._opname}"
    return getattr(target, "__name__", str(target))


def sizes_equal(a, b) -> bool:
    """Sizes provably equal, without adding guards on symbolic dims."""
    return len(a) == len(b) and all(statically_known_true(x == y) for x, y in zip(a, b, strict=True))


def same_shape(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and sizes_equal(a.shape, b.shape)


def lm_head(gm: torch.fx.GraphModule) -> torch.fx.Node | None:
    """The GEMM (plain or quantized) the graph's logits come from, found through args[0] past elementwise tails
    such as final logit soft-capping and, on a tensor-parallel rank, the gather of the logits; else None."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    node = output.args[0][0] if isinstance(output.args[0], tuple | list) else output.args[0]
    while isinstance(node, torch.fx.Node) and node.op == "call_function" and node.args:
        if is_op(node, aten.linear.default, *QUANTIZED_LINEARS):
            return node
        node = node.args[0]
    return None
