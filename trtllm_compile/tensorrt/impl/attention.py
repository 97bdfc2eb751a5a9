"""TensorRT's native attention layer (IAttention): pre-scaled queries, GQA, causality, key lengths and windows.

IAttention wants Q multiplied by the softmax scale before it, takes K/V with fewer heads (GQA/MQA) as they are,
and offers a causal flag or a boolean mask, and per-sequence key lengths. Sliding windows and causality aligned
to per-sequence cache lengths are expressed as a mask built from `arange`s, never as a weight-sized constant.
"""

from __future__ import annotations

import torch

from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.impl.context import ConversionContext
from trtllm_compile.tensorrt.impl.elementwise import binary, mul
from trtllm_compile.tensorrt.impl.shape import arange, as_size_tensor, reshape
from trtllm_compile.tensorrt.impl.tensors import cast, dtype_of

I32 = torch.int32


def _allowed(ctx: ConversionContext, distance, sliding_window: int):
    """distance = query position - key position: allowed where 0 <= distance (< sliding_window)."""
    visible = binary(ctx, "GREATER", distance, -1, I32)
    if sliding_window > 0:
        in_window = binary(ctx, "LESS", distance, sliding_window, I32)
        visible = binary(ctx, "AND", visible, in_window, torch.bool)
    return visible


def causal_mask(ctx: ConversionContext, q_len, kv_len, sliding_window: int):
    """[1, 1, Sq, Skv] boolean mask, aligned top-left (query i is position i), optionally windowed."""
    rows = reshape(ctx, arange(ctx, q_len, I32), [1, 1, -1, 1])
    cols = reshape(ctx, arange(ctx, kv_len, I32), [1, 1, 1, -1])
    return _allowed(ctx, binary(ctx, "SUB", rows, cols, I32), sliding_window)


def cache_mask(ctx: ConversionContext, q_len, kv_capacity, kv_lengths, sliding_window: int):
    """[B, 1, Sq, Smax] boolean mask over a cache holding `kv_lengths[b]` keys, the queries being the last Sq of
    them (aligned bottom-right per sequence); also hides the unwritten tail of the cache."""
    lengths = reshape(ctx, cast(ctx, kv_lengths, I32), [-1, 1, 1, 1])
    rows = reshape(ctx, arange(ctx, q_len, I32), [1, 1, -1, 1])
    cols = reshape(ctx, arange(ctx, kv_capacity, I32), [1, 1, 1, -1])
    first_query = binary(ctx, "SUB", lengths, cast(ctx, as_size_tensor(ctx, q_len), I32), I32)
    positions = binary(ctx, "SUM", first_query, rows, I32)
    return _allowed(ctx, binary(ctx, "SUB", positions, cols, I32), sliding_window)


def attention(
    ctx: ConversionContext,
    q,
    k,
    v,
    scale: float,
    *,
    causal: bool = False,
    mask=None,
    kv_lengths=None,
):
    """One IAttention layer: softmax((q * scale) k^T [masked]) v, GQA included."""
    q = mul(ctx, q, scale, dtype_of(q))
    layer = flavour.add_attention(ctx.net, q, k, v, causal and mask is None)
    if mask is not None:
        layer.mask = mask
    if kv_lengths is not None:
        layer.key_value_lengths = cast(ctx, kv_lengths, I32)
    layer.decomposable = True  # a plain matmul-softmax-matmul where no fused kernel fits (head dims, GPUs)
    return layer.get_output(0)
