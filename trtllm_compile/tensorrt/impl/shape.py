"""Shapes that may be dynamic: shape tensors, reshape, slice, broadcast and fill.

A symbolic size (a graph `SymInt`, e.g. the batch or sequence length) lives in the network as an int64 tensor of
shape [1]; a static size stays a Python int. Helpers take lists mixing both.
"""

from __future__ import annotations

import sys

import torch

from trtllm_compile.tensorrt.impl.context import ConversionContext
from trtllm_compile.tensorrt.impl.tensors import cast, constant, int64_list, torch_dtype, trt_dtype
from trtllm_compile.tensorrt.trt import require_trt

Size = int | object  # a Python int or an int64 ITensor of shape [1]


def rank(x) -> int:
    return len(x.shape)


def is_static(size) -> bool:
    return isinstance(size, int)


def shape_of(ctx: ConversionContext, x):
    """The int64 shape tensor of `x`."""
    return cast(ctx, ctx.net.add_shape(x).get_output(0), torch.int64)


def size(ctx: ConversionContext, x, dim: int) -> Size:
    """Dimension `dim` of `x`: an int where TensorRT knows it statically, else an int64 [1] tensor."""
    dim %= rank(x)
    if x.shape[dim] >= 0:
        return x.shape[dim]
    index = constant(ctx, torch.tensor([dim], dtype=torch.int32))
    return ctx.net.add_gather(shape_of(ctx, x), index, 0).get_output(0)


def known_size(ctx: ConversionContext, x, dim: int, known) -> Size:
    """Dimension `dim` of `x`, where torch's traced size `known` (an int or a SymInt) is at hand: a symbolic size
    is read from the network input that carries it, which keeps TensorRT's shape analysis simple (sizes derived
    deep inside the network have crashed tensorrt_rtx's builder when they shape an attention mask)."""
    if isinstance(known, int):
        return known
    if isinstance(known, torch.SymInt) and str(known.node.expr) in ctx.specialized:
        return ctx.specialized[str(known.node.expr)]
    source = ctx.input_sizes.get(str(known.node.expr)) if isinstance(known, torch.SymInt) else None
    if source is None:
        return size(ctx, x, dim)
    key = ("input_size", str(known.node.expr))
    if key not in ctx.cache:
        ctx.cache[key] = size(ctx, *source)
    return ctx.cache[key]


def as_size_tensor(ctx: ConversionContext, value: Size):
    """An int64 [1] tensor for a size (0-d or int32 tensors are reshaped/cast)."""
    if is_static(value):
        return int64_list(ctx, [value])
    value = cast(ctx, value, torch.int64)
    if rank(value) != 1:
        layer = ctx.net.add_shuffle(value)
        layer.reshape_dims = (1,)
        value = layer.get_output(0)
    return value


def shape_tensor(ctx: ConversionContext, sizes: list[Size]):
    """An int64 [len(sizes)] shape tensor; runs of static sizes become one constant."""
    parts, run = [], []
    for s in sizes:
        if is_static(s):
            run.append(int(s))
            continue
        if run:
            parts.append(int64_list(ctx, run))
            run = []
        parts.append(as_size_tensor(ctx, s))
    if run:
        parts.append(int64_list(ctx, run))
    if len(parts) == 1:
        return parts[0]
    layer = ctx.net.add_concatenation(parts)
    layer.axis = 0
    return layer.get_output(0)


def sizes_of(ctx: ConversionContext, x) -> list[Size]:
    return [size(ctx, x, d) for d in range(rank(x))]


def reshape(ctx: ConversionContext, x, sizes: list[Size]):
    """view/reshape: sizes may hold one -1, and symbolic sizes as [1] tensors."""
    layer = ctx.net.add_shuffle(x)
    if all(is_static(s) for s in sizes):
        layer.zero_is_placeholder = False
        layer.reshape_dims = tuple(int(s) for s in sizes)
    else:
        layer.zero_is_placeholder = False
        layer.set_input(1, shape_tensor(ctx, sizes))
    return layer.get_output(0)


def permute(ctx: ConversionContext, x, order: list[int]):
    layer = ctx.net.add_shuffle(x)
    layer.first_transpose = tuple(int(d) % rank(x) for d in order)
    return layer.get_output(0)


def unsqueeze(ctx: ConversionContext, x, dim: int):
    dim %= rank(x) + 1
    return ctx.net.add_unsqueeze(x, int64_list(ctx, [dim])).get_output(0)


def squeeze(ctx: ConversionContext, x, dims: list[int]):
    dims = sorted({d % rank(x) for d in dims})
    return ctx.net.add_squeeze(x, int64_list(ctx, dims)).get_output(0)


def to_rank(ctx: ConversionContext, x, target: int):
    """`x` with leading size-1 dims added up to rank `target` (numpy broadcasting aligns trailing dims)."""
    if rank(x) >= target:
        return x
    return ctx.net.add_unsqueeze(x, int64_list(ctx, list(range(target - rank(x))))).get_output(0)


def _clamp(index: int, length: int) -> int:
    index = index + length if index < 0 else index
    return max(0, min(index, length))


def slice_dim(ctx: ConversionContext, x, dim: int, start: Size, end: Size | None, step: int = 1):
    """x[..., start:end:step, ...] on `dim` (torch semantics: negative and out-of-range bounds clamp)."""
    trt = require_trt()
    dim %= rank(x)
    length = x.shape[dim]
    end = sys.maxsize if end is None else end
    starts = [0] * rank(x)
    steps = [1] * rank(x)
    steps[dim] = step
    if length >= 0 and is_static(start) and is_static(end):
        begin, stop = _clamp(start, length), _clamp(end, length)
        starts[dim] = begin
        count = max(0, (stop - begin + step - 1) // step)
        if all(d >= 0 for d in x.shape):
            shape = list(x.shape)
            shape[dim] = count
            return ctx.net.add_slice(x, tuple(starts), tuple(shape), tuple(steps)).get_output(0)
        sizes = sizes_of(ctx, x)
        sizes[dim] = count
    else:
        if not (is_static(start) and start >= 0 and (not is_static(end) or end >= sys.maxsize // 2)):
            raise NotImplementedError("dynamic slices take a non-negative static start and a symbolic or open end")
        sizes = sizes_of(ctx, x)
        stop = sizes[dim] if is_static(end) else end
        starts[dim] = start
        count = ctx.net.add_elementwise(
            as_size_tensor(ctx, stop), int64_list(ctx, [start]), trt.ElementWiseOperation.SUB
        ).get_output(0)
        if step != 1:
            raise NotImplementedError("dynamic slices take step 1")
        sizes[dim] = count
    layer = ctx.net.add_slice(x, tuple(starts), (1,) * rank(x), tuple(steps))
    layer.set_input(2, shape_tensor(ctx, sizes))
    return layer.get_output(0)


def expand(ctx: ConversionContext, x, sizes: list[Size]):
    """Broadcast size-1 dims of `x` to `sizes` (-1 keeps a dim) with a stride-0 slice."""
    x = to_rank(ctx, x, len(sizes))
    target = [size(ctx, x, d) if (is_static(s) and s == -1) else s for d, s in enumerate(sizes)]
    strides = tuple(0 if x.shape[d] == 1 and not (is_static(s) and s == 1) else 1 for d, s in enumerate(target))
    layer = ctx.net.add_slice(x, (0,) * len(sizes), (1,) * len(sizes), strides)
    if all(is_static(s) for s in target):
        layer.shape = tuple(int(s) for s in target)
    else:
        layer.set_input(2, shape_tensor(ctx, target))
    return layer.get_output(0)


def fill(ctx: ConversionContext, sizes: list[Size], value: float, dtype: torch.dtype):
    """A tensor of `sizes` filled with `value`, built at run time when a size is symbolic."""
    if all(is_static(s) for s in sizes):
        return constant(ctx, torch.full([int(s) for s in sizes], value, dtype=dtype))
    one = constant(ctx, torch.full([1] * len(sizes), value, dtype=dtype))
    return expand(ctx, one, sizes)


def arange(ctx: ConversionContext, length: Size, dtype: torch.dtype, start: float = 0, step: float = 1):
    """[start, start + step, ...] of `length` elements (LINSPACE fill: `length` may be symbolic)."""
    trt = require_trt()
    fill_type = torch.int64 if not dtype.is_floating_point else torch.float32
    layer = ctx.net.add_fill((1,), trt.FillOperation.LINSPACE, trt_dtype(fill_type))
    if is_static(length):
        layer.shape = (int(length),)
    else:
        layer.set_input(0, as_size_tensor(ctx, length))
    layer.set_input(1, constant(ctx, torch.tensor(start, dtype=fill_type)))
    layer.set_input(2, constant(ctx, torch.tensor([step], dtype=fill_type)))
    out = layer.get_output(0)
    return cast(ctx, out, dtype) if torch_dtype(out.dtype) != dtype else out
