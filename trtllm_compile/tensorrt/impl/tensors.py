"""Types, casts and constants: torch dtypes <-> TensorRT data types, and graph weights as named `trt.Weights`."""

from __future__ import annotations

import functools

import torch

from trtllm_compile.tensorrt.impl.context import ConversionContext, FrozenTensor
from trtllm_compile.tensorrt.trt import require_trt


@functools.cache
def _dtype_pairs() -> list[tuple[torch.dtype, object]]:
    trt = require_trt()
    return [
        (torch.float32, trt.float32),
        (torch.float16, trt.float16),
        (torch.bfloat16, trt.bfloat16),
        (torch.int32, trt.int32),
        (torch.int64, trt.int64),
        (torch.bool, trt.bool),
        (torch.int8, trt.int8),
        (torch.uint8, trt.uint8),
    ]


def trt_dtype(dtype: torch.dtype):
    for torch_type, trt_type in _dtype_pairs():
        if torch_type == dtype:
            return trt_type
    raise TypeError(f"TensorRT has no data type for {dtype}")


def torch_dtype(dtype) -> torch.dtype:
    for torch_type, trt_type in _dtype_pairs():
        if trt_type == dtype:
            return torch_type
    raise TypeError(f"no torch dtype for TensorRT {dtype}")


def dtype_of(x) -> torch.dtype:
    """The torch dtype of an ITensor or a graph constant."""
    return x.tensor.dtype if isinstance(x, FrozenTensor) else torch_dtype(x.dtype)


def is_tensor(x) -> bool:
    trt = require_trt()
    return isinstance(x, trt.ITensor | FrozenTensor)


def weights(ctx: ConversionContext, tensor: torch.Tensor):
    """`trt.Weights` over host memory kept alive in `ctx` (by pointer, so bfloat16 needs no numpy)."""
    trt = require_trt()
    tensor = tensor.detach().cpu().contiguous()
    ctx.keepalive.append(tensor)
    return trt.Weights(trt_dtype(tensor.dtype), tensor.data_ptr(), tensor.numel())


def constant(ctx: ConversionContext, tensor: torch.Tensor, shape: tuple[int, ...] | None = None):
    """A constant layer holding `tensor` (reshaped to `shape`, e.g. with leading 1s for broadcasting)."""
    layer = ctx.net.add_constant(tuple(tensor.shape if shape is None else shape), weights(ctx, tensor))
    return layer.get_output(0)


def frozen(ctx: ConversionContext, value: FrozenTensor, rank: int | None = None):
    """A graph weight as a constant layer, at `rank` (leading 1s added); every use shares one named Weights."""
    shape = tuple(value.tensor.shape)
    if rank is not None and rank > len(shape):
        shape = (1,) * (rank - len(shape)) + shape
    w = ctx.named_weights.get(value.name)
    if w is None:
        w = weights(ctx, value.tensor)
        ctx.named_weights[value.name] = w
    return ctx.net.add_constant(shape, w).get_output(0)


def itensor(ctx: ConversionContext, x, dtype: torch.dtype | None = None, rank: int | None = None):
    """An ITensor for a converted value, graph constant or Python scalar (a scalar needs `dtype`)."""
    trt = require_trt()
    if isinstance(x, FrozenTensor):
        x = frozen(ctx, x, rank)
    elif not isinstance(x, trt.ITensor):
        if dtype is None:
            raise TypeError(f"a scalar {x!r} needs a dtype to become a tensor")
        x = constant(ctx, torch.tensor(x, dtype=dtype), (1,) * (rank or 0))
    if dtype is not None:
        x = cast(ctx, x, dtype)
    return x


def cast(ctx: ConversionContext, x, dtype: torch.dtype):
    """`x` as `dtype`; strongly typed networks take no implicit conversions."""
    if isinstance(x, FrozenTensor):
        x = frozen(ctx, x)
    if torch_dtype(x.dtype) == dtype:
        return x
    return ctx.net.add_cast(x, trt_dtype(dtype)).get_output(0)


def int64_list(ctx: ConversionContext, values: list[int]):
    return constant(ctx, torch.tensor(values, dtype=torch.int64))
