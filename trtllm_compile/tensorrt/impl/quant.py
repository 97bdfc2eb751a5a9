"""Quantize/dequantize helpers: quantized weights as constants of their quantized TensorRT type, Q/DQ pairs, and
the GEMM that reads a dequantized weight (the pattern TensorRT fuses into a quantized GEMM).

Scales stay float32 constants, as the ops carry them; a DQ layer outputs the activation dtype, so the GEMM that
follows runs in it (fused, the quantized kernel accumulates in float32 and applies the scales, as the references
of `trtllm_compile.ops.quant` do).
"""

from __future__ import annotations

import torch

from trtllm_compile.tensorrt.impl.context import ConversionContext, FrozenTensor
from trtllm_compile.tensorrt.impl.elementwise import add
from trtllm_compile.tensorrt.impl.shape import rank, reshape, to_rank
from trtllm_compile.tensorrt.impl.tensors import constant, frozen, itensor, trt_dtype


def _trt_weights(ctx: ConversionContext, tensor: torch.Tensor, trt_type, count: int):
    """`trt.Weights` of `count` elements of `trt_type` over `tensor`'s bytes (kept alive in `ctx`)."""
    tensor = tensor.detach().cpu().contiguous()
    ctx.keepalive.append(tensor)
    return ctx.trt.Weights(trt_type, tensor.data_ptr(), count)


def quantized_constant(ctx: ConversionContext, weight: FrozenTensor, trt_type, shape: tuple[int, ...], data=None):
    """A constant layer of the quantized type holding `weight` (or `data`, its bytes re-encoded), shared by name
    like every graph weight so that refit finds it."""
    w = ctx.named_weights.get(weight.name)
    if w is None:
        w = _trt_weights(ctx, weight.tensor if data is None else data, trt_type, int(torch.Size(shape).numel()))
        ctx.named_weights[weight.name] = w
    return ctx.net.add_constant(shape, w).get_output(0)


def scale_constant(ctx: ConversionContext, scale, shape: tuple[int, ...] | None = None, dtype=torch.float32):
    """A scale constant (a graph weight, or a tensor computed here) in `dtype` at `shape`."""
    if isinstance(scale, FrozenTensor) and shape is None and scale.tensor.dtype == dtype:
        return frozen(ctx, scale)
    tensor = scale.tensor if isinstance(scale, FrozenTensor) else scale
    return constant(ctx, tensor.to(dtype).contiguous(), shape)


def quantize(ctx: ConversionContext, x, scale, trt_type, axis: int | None = None):
    layer = ctx.net.add_quantize(x, scale, trt_type)
    if axis is not None:
        layer.axis = axis
    return layer.get_output(0)


def dequantize(ctx: ConversionContext, q, scale, dtype: torch.dtype, axis: int | None = None):
    layer = ctx.net.add_dequantize(q, scale, trt_dtype(dtype))
    if axis is not None:
        layer.axis = axis
    return layer.get_output(0)


def qdq(ctx: ConversionContext, x, scale, trt_type, dtype: torch.dtype):
    """x rounded through `trt_type` with a per-tensor scale and back to `dtype`."""
    return dequantize(ctx, quantize(ctx, x, scale, trt_type), scale, dtype)


def dequantized_weight(ctx: ConversionContext, weight: FrozenTensor, scale: FrozenTensor, trt_type, dtype):
    """[N, K] `weight` of `trt_type` with a per-tensor ([]) or per-output-channel ([N]) scale, dequantized."""
    q = quantized_constant(ctx, weight, trt_type, tuple(weight.tensor.shape))
    per_channel = scale.tensor.dim() == 1
    return dequantize(ctx, q, scale_constant(ctx, scale), dtype, axis=0 if per_channel else None)


def dequantized_int4_weight(ctx: ConversionContext, packed: FrozenTensor, scales, zeros, group_size: int, dtype):
    """[N, K] from INT4 codes packed two per byte (element 2i in the low nibble, as TensorRT packs INT4 too).

    Our codes are unsigned with zero point z (8 when symmetric); TensorRT's INT4 is signed, so the stored nibble
    is code - 8 (code XOR 8) and (code - z) * s = DQ(code - 8, s) + (8 - z) * s, the second term one value per
    group added after the DQ (block scales [N, K / group]: tensorrt_rtx infers the block from the scale's shape).
    Block-scaled DQ wants its scales in its output type: fp16/bf16 engines round them (float32 ones do not).
    """
    n, k = packed.tensor.shape[0], packed.tensor.shape[1] * 2
    signed = packed.tensor ^ 0x88
    q = quantized_constant(ctx, packed, ctx.trt.int4, (n, k), data=signed)
    w = dequantize(ctx, q, scale_constant(ctx, scales, dtype=dtype), dtype)
    if zeros is None:
        return w
    offset = ((8.0 - zeros.tensor.float()) * scales.tensor.float()).to(dtype)
    groups = reshape(ctx, w, [n, k // group_size, group_size])
    groups = add(ctx, groups, constant(ctx, offset, (n, k // group_size, 1)), dtype)
    return reshape(ctx, groups, [n, k])


def linear_with(ctx: ConversionContext, x, weight, bias, dtype: torch.dtype):
    """x @ weight.T (+ bias): the weight [N, K] read transposed by the matrix-multiply layer."""
    ops = ctx.trt.MatrixOperation
    r = max(rank(x), 2)
    out = ctx.net.add_matrix_multiply(x, ops.NONE, to_rank(ctx, weight, r), ops.TRANSPOSE).get_output(0)
    if bias is not None:
        out = add(ctx, out, itensor(ctx, bias, dtype=dtype, rank=rank(out)), dtype)
    return out
