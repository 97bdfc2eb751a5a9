"""Elementwise, unary, activation and reduction layers with torch's type promotion and broadcasting."""

from __future__ import annotations

import torch

from trtllm_compile.tensorrt.impl.context import ConversionContext
from trtllm_compile.tensorrt.impl.shape import rank, to_rank
from trtllm_compile.tensorrt.impl.tensors import cast, dtype_of, itensor
from trtllm_compile.tensorrt.trt import require_trt


def _rank_of(x) -> int:
    if hasattr(x, "tensor"):
        return x.tensor.dim()
    return rank(x) if hasattr(x, "shape") else 0


def binary(ctx: ConversionContext, op: str, a, b, dtype: torch.dtype):
    """`a <op> b` computed in `dtype` (the promoted type torch would use); op names ElementWiseOperation."""
    trt = require_trt()
    target = max(_rank_of(a), _rank_of(b))
    a = to_rank(ctx, itensor(ctx, a, dtype, rank=target), target)
    b = to_rank(ctx, itensor(ctx, b, dtype, rank=target), target)
    return ctx.net.add_elementwise(a, b, getattr(trt.ElementWiseOperation, op)).get_output(0)


def add(ctx, a, b, dtype):
    return binary(ctx, "SUM", a, b, dtype)


def mul(ctx, a, b, dtype):
    return binary(ctx, "PROD", a, b, dtype)


def unary(ctx: ConversionContext, op: str, x):
    trt = require_trt()
    return ctx.net.add_unary(itensor(ctx, x), getattr(trt.UnaryOperation, op)).get_output(0)


def activation(ctx: ConversionContext, kind: str, x, alpha: float | None = None, beta: float | None = None):
    trt = require_trt()
    layer = ctx.net.add_activation(itensor(ctx, x), getattr(trt.ActivationType, kind))
    if alpha is not None:
        layer.alpha = alpha
    if beta is not None:
        layer.beta = beta
    return layer.get_output(0)


def silu(ctx: ConversionContext, x):
    x = itensor(ctx, x)
    return mul(ctx, x, activation(ctx, "SIGMOID", x), dtype_of(x))


ACTIVATIONS = {
    "silu": silu,
    "gelu": lambda ctx, x: activation(ctx, "GELU_ERF", x),
    "gelu_tanh": lambda ctx, x: activation(ctx, "GELU_TANH", x),
    "relu": lambda ctx, x: activation(ctx, "RELU", x),
}


def rsqrt(ctx: ConversionContext, x):
    return unary(ctx, "RECIP", unary(ctx, "SQRT", x))


def reduce(ctx: ConversionContext, op: str, x, dims: list[int], keepdim: bool):
    trt = require_trt()
    mask = 0
    for d in dims:
        mask |= 1 << (d % rank(x))
    return ctx.net.add_reduce(x, getattr(trt.ReduceOperation, op), mask, keepdim).get_output(0)


def softmax(ctx: ConversionContext, x, dim: int):
    layer = ctx.net.add_softmax(x)
    layer.axes = 1 << (dim % rank(x))
    return layer.get_output(0)


def where(ctx: ConversionContext, condition, a, b, dtype: torch.dtype):
    target = max(_rank_of(condition), _rank_of(a), _rank_of(b))
    condition = to_rank(ctx, cast(ctx, itensor(ctx, condition), torch.bool), target)
    a = to_rank(ctx, itensor(ctx, a, dtype, rank=target), target)
    b = to_rank(ctx, itensor(ctx, b, dtype, rank=target), target)
    return ctx.net.add_select(condition, a, b).get_output(0)
