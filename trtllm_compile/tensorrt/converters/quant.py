"""Quantized GEMMs and the FP8 round trip of the KV cache, as TensorRT Q/DQ layers.

trtllm::fp8_linear / int8_linear (W8A8, static activation scale):
    x -> Q(input_scale) -> DQ(input_scale) ─┐
    W (FP8 / INT8 constant) -> DQ(weight_scale, per tensor or per channel) -> matmul(x, W^T) [+ bias]
trtllm::int4_linear (weight-only): W (INT4 constant) -> DQ(block scales [N, K / group]) [+ zero-point term] -> matmul
trtllm::fp8_qdq: x -> Q(scale, FP8) -> DQ(scale)

The weights stay quantized in the engine; TensorRT fuses each DQ -> matmul into a quantized GEMM. Dynamic
per-token activation scales (input_scale None, the default of int8_sq) have no Q/DQ form here: the
IDynamicQuantizeLayer takes blocks of 16 or 32 elements only, and a quantize layer with a scale computed at run
time needs the quantized dims known at build time, which the dynamic batch is not. Such nodes are refused by the
validator with the fix (activations="static"), or left in PyTorch by partition=True.
"""

from __future__ import annotations

import torch

from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.context import FrozenTensor
from trtllm_compile.tensorrt.impl.quant import (
    dequantize,
    dequantized_int4_weight,
    dequantized_weight,
    linear_with,
    qdq,
    quantize,
    scale_constant,
)
from trtllm_compile.tensorrt.impl.tensors import dtype_of, itensor

trtllm = torch.ops.trtllm

DYNAMIC_SCALE_REASON = (
    "dynamic per-token activation scales (input_scale=None) have no TensorRT Q/DQ form (IDynamicQuantizeLayer "
    'takes 16- or 32-element blocks only); quantize with QuantConfig.from_name(fmt, activations="static")'
)


def _arg(node, index: int, name: str):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name)


def _val(arg):
    return arg.meta.get("val") if isinstance(arg, torch.fx.Node) else arg


def _validate_w8a8(node) -> str | None:
    if _arg(node, 3, "input_scale") is None:
        return DYNAMIC_SCALE_REASON
    scale = _val(_arg(node, 3, "input_scale"))
    if isinstance(scale, torch.Tensor) and scale.numel() != 1:
        return f"the input scale must be per tensor, got shape {list(scale.shape)}"
    return None


def _validate_int4(node) -> str | None:
    weight, group_size = _val(_arg(node, 1, "weight")), _arg(node, 4, "group_size")
    k = weight.shape[1] * 2 if isinstance(weight, torch.Tensor) else None
    if k is not None and k % group_size:
        return f"K = {k} is not a multiple of group_size {group_size} (TensorRT blocks are whole)"
    return None


def _validate_qdq(node) -> str | None:
    scale = _val(_arg(node, 1, "scale"))
    if isinstance(scale, torch.Tensor) and scale.numel() != 1:
        return f"fp8_qdq takes a per-tensor scale, got shape {list(scale.shape)}"
    return None


def _constant(name: str, value) -> FrozenTensor:
    if not isinstance(value, FrozenTensor):
        raise TypeError(f"the {name} must be a graph constant (a frozen weight) to be stored quantized in the engine")
    return value


def _w8a8_linear(ctx, node, x, weight, weight_scale, input_scale, bias, trt_type):
    x = itensor(ctx, x)
    dtype = dtype_of(x)
    scale = scale_constant(ctx, _constant("input scale", input_scale), shape=())
    x = dequantize(ctx, quantize(ctx, x, scale, trt_type), scale, dtype)
    w = dequantized_weight(ctx, _constant("weight", weight), _constant("weight scale", weight_scale), trt_type, dtype)
    return linear_with(ctx, x, w, bias, dtype)


@converter(trtllm.fp8_linear.default, validator=_validate_w8a8)
def convert_fp8_linear(ctx, node, x, weight, weight_scale, input_scale, bias=None):
    return _w8a8_linear(ctx, node, x, weight, weight_scale, input_scale, bias, ctx.trt.fp8)


@converter(trtllm.int8_linear.default, validator=_validate_w8a8)
def convert_int8_linear(ctx, node, x, weight, weight_scale, input_scale, bias=None):
    return _w8a8_linear(ctx, node, x, weight, weight_scale, input_scale, bias, ctx.trt.int8)


@converter(trtllm.int4_linear.default, validator=_validate_int4)
def convert_int4_linear(ctx, node, x, weight, scales, zeros, group_size, bias=None):
    x = itensor(ctx, x)
    dtype = dtype_of(x)
    zeros = _constant("zero point", zeros) if zeros is not None else None
    w = dequantized_int4_weight(ctx, _constant("weight", weight), _constant("scale", scales), zeros, group_size, dtype)
    return linear_with(ctx, x, w, bias, dtype)


@converter(trtllm.fp8_qdq.default, validator=_validate_qdq)
def convert_fp8_qdq(ctx, node, x, scale):
    x = itensor(ctx, x)
    scale = scale_constant(ctx, scale, shape=()) if isinstance(scale, FrozenTensor) else itensor(ctx, scale)
    return qdq(ctx, x, scale, ctx.trt.fp8, dtype_of(x))
