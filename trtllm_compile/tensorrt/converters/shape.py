"""Layout ops: view/reshape, permute/transpose, (un)squeeze, slice, cat, split, expand, repeat_interleave,
contiguous/clone (no-ops in TensorRT), sizes (`sym_size`) and tuple indexing."""

from __future__ import annotations

import operator

from trtllm_compile.fx_utils import aten, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import shape as sh
from trtllm_compile.tensorrt.impl.tensors import cast, itensor


@converter(aten.sym_size.int)
def convert_sym_size(ctx, node, x, dim):
    return sh.known_size(ctx, itensor(ctx, x), dim, val(node))


@converter(operator.getitem)
def convert_getitem(ctx, node, sequence, index):
    return sequence[index]


@converter(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def convert_view(ctx, node, x, sizes):
    # Where torch knows a size statically, say so: a -1 left to TensorRT next to a symbolic size stays unknown at
    # build time, and layers like attention need static head counts.
    sizes = [known if isinstance(known, int) else s for known, s in zip(val(node).shape, sizes, strict=True)]
    return sh.reshape(ctx, itensor(ctx, x), sizes)


@converter(aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default)
def convert_identity(ctx, node, x, memory_format=None):
    return itensor(ctx, x)


@converter(aten.permute.default)
def convert_permute(ctx, node, x, dims):
    return sh.permute(ctx, itensor(ctx, x), list(dims))


@converter(aten.transpose.int)
def convert_transpose(ctx, node, x, dim0, dim1):
    x = itensor(ctx, x)
    order = list(range(sh.rank(x)))
    dim0, dim1 = dim0 % len(order), dim1 % len(order)
    order[dim0], order[dim1] = order[dim1], order[dim0]
    return sh.permute(ctx, x, order)


@converter(aten.t.default)
def convert_t(ctx, node, x):
    return convert_transpose(ctx, node, x, 0, 1)


@converter(aten.unsqueeze.default)
def convert_unsqueeze(ctx, node, x, dim):
    return sh.unsqueeze(ctx, itensor(ctx, x), dim)


@converter(aten.squeeze.dim, aten.squeeze.dims)
def convert_squeeze(ctx, node, x, dims):
    x = itensor(ctx, x)
    dims = [dims] if isinstance(dims, int) else list(dims)
    dims = [d for d in dims if x.shape[d] == 1]  # torch leaves a non-1 dim alone
    return sh.squeeze(ctx, x, dims) if dims else x


@converter(aten.slice.Tensor)
def convert_slice(ctx, node, x, dim=0, start=None, end=None, step=1):
    return sh.slice_dim(ctx, itensor(ctx, x), dim, start or 0, end, step)


@converter(aten.select.int)
def convert_select(ctx, node, x, dim, index):
    x = itensor(ctx, x)
    return sh.squeeze(ctx, sh.slice_dim(ctx, x, dim, index, index + 1 if index != -1 else None), [dim])


@converter(aten.cat.default)
def convert_cat(ctx, node, tensors, dim=0):
    dtype = val(node).dtype
    parts = [cast(ctx, itensor(ctx, t), dtype) for t in tensors]
    layer = ctx.net.add_concatenation(parts)
    layer.axis = dim % sh.rank(parts[0])
    return layer.get_output(0)


@converter(aten.split.Tensor, aten.split_with_sizes.default)
def convert_split(ctx, node, x, split, dim=0):
    x = itensor(ctx, x)
    pieces, start = [], 0
    for piece in val(node):
        length = piece.shape[dim]
        if not isinstance(length, int):
            raise NotImplementedError("split along a dynamic dim")
        pieces.append(sh.slice_dim(ctx, x, dim, start, start + length))
        start += length
    return tuple(pieces)


@converter(aten.expand.default)
def convert_expand(ctx, node, x, sizes, implicit=False):
    return sh.expand(ctx, itensor(ctx, x), list(sizes))


def _static_repeats(node) -> str | None:
    repeats = node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if not isinstance(repeats, int) or dim is None:
        return "only a static int repeat along a given dim converts"
    return None


@converter(aten.repeat_interleave.self_int, validator=_static_repeats)
def convert_repeat_interleave(ctx, node, x, repeats, dim=None, output_size=None):
    """x.repeat_interleave(r, dim): unsqueeze after `dim`, broadcast r copies, merge the two dims."""
    x = itensor(ctx, x)
    dim %= sh.rank(x)
    wide = sh.unsqueeze(ctx, x, dim + 1)
    sizes = sh.sizes_of(ctx, wide)
    sizes[dim + 1] = repeats
    wide = sh.expand(ctx, wide, sizes)
    merged = sh.sizes_of(ctx, x)
    merged[dim] = -1
    return sh.reshape(ctx, wide, merged)
