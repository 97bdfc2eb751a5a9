"""Rotary embeddings: TensorRT's rotary layer where the layout fits, else the rotation from primitives.

The layer wants x as [B, N, S, D] and cos/sin as [B, S, rot/2], one value per rotated pair. `trtllm.rope` takes
one value per rotated feature instead, so the layer fits when the graph provably built cos/sin with each pair's
value twice: `cat([f, f], -1)` for rotate-half, `repeat_interleave(f, 2, -1)` for GPT-J's interleaved form.
"""

from __future__ import annotations

import torch

from trtllm_compile.fx_utils import aten, is_op, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import shape as sh
from trtllm_compile.tensorrt.impl.elementwise import add, binary, mul
from trtllm_compile.tensorrt.impl.tensors import cast, dtype_of, itensor

# Ops that keep "each pair's value twice" along the last dim.
_PASS_THROUGH = {aten.cos.default, aten.sin.default, aten.unsqueeze.default, aten.to.dtype, aten._to_copy.default}


def _duplicated_pairs(node, interleaved: bool) -> bool:
    while is_op(node, *_PASS_THROUGH, aten.mul.Tensor):
        if is_op(node, aten.mul.Tensor) and not isinstance(node.args[1], int | float):
            return False
        if is_op(node, aten.unsqueeze.default) and node.args[1] in (-1, val(node).dim() - 1):
            return False
        node = node.args[0]
    if interleaved:
        return (
            is_op(node, aten.repeat_interleave.self_int)
            and node.args[1] == 2
            and node.args[2] in (-1, val(node).dim() - 1)
        )
    return (
        is_op(node, aten.cat.default)
        and len(node.args[0]) == 2
        and node.args[0][0] is node.args[0][1]
        and (node.args[1] if len(node.args) > 1 else 0) in (-1, val(node).dim() - 1)
    )


def native_layout(node) -> str | None:
    """ "BNSD"/"BSND" when TensorRT's rotary layer computes exactly this node, else None."""
    x, cos, sin = (val(a) for a in node.args[:3])
    interleaved = node.args[3] if len(node.args) > 3 else node.kwargs.get("interleaved", False)
    if x.dim() != 4 or cos.dim() != 4 or cos.shape != sin.shape or cos.shape[-1] % 2:
        return None
    if not all(_duplicated_pairs(a, interleaved) for a in node.args[1:3]):
        return None
    if cos.shape[1] == 1 and cos.shape[0] == x.shape[0] and cos.shape[2] == x.shape[2]:
        return "BNSD"
    if cos.shape[2] == 1 and cos.shape[0] == x.shape[0] and cos.shape[1] == x.shape[1]:
        return "BSND"
    return None


def _pair_values(ctx, table, heads_dim: int, interleaved: bool):
    """[B, S, rot/2] from a [B, 1, S, rot] or [B, S, 1, rot] table holding each pair's value twice."""
    table = sh.squeeze(ctx, table, [heads_dim])
    half = table.shape[-1] // 2
    return sh.slice_dim(ctx, table, -1, 0, None, 2) if interleaved else sh.slice_dim(ctx, table, -1, 0, half)


@converter(torch.ops.trtllm.rope.default)
def convert_rope(ctx, node, x, cos, sin, interleaved=False):
    x, cos, sin = (itensor(ctx, t) for t in (x, cos, sin))
    layout = native_layout(node)
    if layout is None:
        return rope_primitives(ctx, node, x, cos, sin, interleaved)
    heads_dim = 1 if layout == "BNSD" else 2
    if layout == "BSND":
        x = sh.permute(ctx, x, [0, 2, 1, 3])
    dtype = dtype_of(x)
    cos, sin = (cast(ctx, _pair_values(ctx, t, heads_dim, interleaved), dtype) for t in (cos, sin))
    rotary_dim = val(node.args[1]).shape[-1]
    layer = ctx.net.add_rotary_embedding(x, cos, sin, interleaved, 0 if rotary_dim == x.shape[-1] else rotary_dim)
    out = layer.get_output(0)
    return sh.permute(ctx, out, [0, 2, 1, 3]) if layout == "BSND" else out


def rope_primitives(ctx, node, x, cos, sin, interleaved: bool):
    """x_rot * cos + rotate(x_rot) * sin, the un-rotated tail concatenated back (ops.rope's reference)."""
    rotary_dim = val(node.args[1]).shape[-1]
    head_dim = val(node.args[0]).shape[-1]
    x_rot = sh.slice_dim(ctx, x, -1, 0, rotary_dim) if rotary_dim < head_dim else x
    dtype = torch.promote_types(dtype_of(x), dtype_of(cos))
    if interleaved:
        odd, even = sh.slice_dim(ctx, x_rot, -1, 1, None, 2), sh.slice_dim(ctx, x_rot, -1, 0, None, 2)
        pairs = [sh.unsqueeze(ctx, binary(ctx, "SUB", 0.0, odd, dtype_of(x)), -1), sh.unsqueeze(ctx, even, -1)]
        stacked = _concat(ctx, pairs, -1)
        sizes = sh.sizes_of(ctx, x_rot)
        rotated = sh.reshape(ctx, stacked, sizes)
    else:
        half = rotary_dim // 2
        first, second = sh.slice_dim(ctx, x_rot, -1, 0, half), sh.slice_dim(ctx, x_rot, -1, half, None)
        rotated = _concat(ctx, [binary(ctx, "SUB", 0.0, second, dtype_of(x)), first], -1)
    out = add(ctx, mul(ctx, x_rot, cos, dtype), mul(ctx, rotated, sin, dtype), dtype)
    out = cast(ctx, out, dtype_of(x))
    if rotary_dim < head_dim:
        out = _concat(ctx, [out, sh.slice_dim(ctx, x, -1, rotary_dim, None)], -1)
    return out


def _concat(ctx, parts, dim: int):
    layer = ctx.net.add_concatenation(parts)
    layer.axis = dim % sh.rank(parts[0])
    return layer.get_output(0)
