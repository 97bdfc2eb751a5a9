"""Normalizations: RMSNorm from primitives in fp32 (TensorRT's normalization layer has no RMS mode) and LayerNorm
on the normalization layer."""

from __future__ import annotations

import torch

from trtllm_compile.tensorrt.impl.context import ConversionContext
from trtllm_compile.tensorrt.impl.elementwise import add, mul, reduce, rsqrt
from trtllm_compile.tensorrt.impl.shape import rank, to_rank
from trtllm_compile.tensorrt.impl.tensors import FrozenTensor, cast, constant, dtype_of, itensor


def rms_norm(ctx: ConversionContext, x, weight, eps: float, unit_offset: bool, out_dtype: torch.dtype):
    """Exactly `ops.norm.rms_norm_reference`: statistics in fp32, then Llama's or Gemma's cast order."""
    f32 = torch.float32
    xf = cast(ctx, x, f32)
    mean_square = reduce(ctx, "AVG", mul(ctx, xf, xf, f32), [rank(xf) - 1], keepdim=True)
    normed = mul(ctx, xf, rsqrt(ctx, add(ctx, mean_square, eps, f32)), f32)
    if unit_offset:
        scale = add(ctx, 1.0, itensor(ctx, weight, f32, rank=rank(xf)), f32)
        return cast(ctx, mul(ctx, normed, scale, f32), out_dtype)
    return mul(ctx, itensor(ctx, weight, rank=rank(xf)), cast(ctx, normed, dtype_of(x)), out_dtype)


def layer_norm(ctx: ConversionContext, x, weight, bias, eps: float):
    """LayerNorm over the last dim on the normalization layer; scale/bias are [1, ..., H] in x's dtype."""
    dtype, hidden, r = dtype_of(x), x.shape[-1], rank(x)
    weight = weight if weight is not None else FrozenTensor("", torch.ones(hidden, dtype=dtype))
    bias = bias if bias is not None else FrozenTensor("", torch.zeros(hidden, dtype=dtype))
    scale, shift = (_as_rank(ctx, t, r, dtype) for t in (weight, bias))
    layer = ctx.net.add_normalization_v2(x, scale, shift, 1 << (r - 1))
    layer.epsilon = eps
    return layer.get_output(0)


def _as_rank(ctx: ConversionContext, value, r: int, dtype: torch.dtype):
    if isinstance(value, FrozenTensor) and not value.name:  # made up here: an anonymous constant
        return constant(ctx, value.tensor.to(dtype), (1,) * (r - 1) + tuple(value.tensor.shape))
    return to_rank(ctx, itensor(ctx, value, dtype, rank=r), r)
