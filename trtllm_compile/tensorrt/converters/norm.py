"""RMSNorm (Llama and Gemma forms, with or without the fused residual add) built in fp32 from primitives, and
LayerNorm on TensorRT's normalization layer."""

from __future__ import annotations

import torch

from trtllm_compile.fx_utils import val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import norm
from trtllm_compile.tensorrt.impl.elementwise import add
from trtllm_compile.tensorrt.impl.tensors import itensor

trtllm = torch.ops.trtllm


@converter(trtllm.rms_norm.default)
def convert_rms_norm(ctx, node, x, weight, eps, unit_offset=False):
    return norm.rms_norm(ctx, itensor(ctx, x), weight, eps, unit_offset, val(node).dtype)


@converter(trtllm.add_rms_norm.default)
def convert_add_rms_norm(ctx, node, x, residual, weight, eps, unit_offset=False):
    normed_val, summed_val = val(node)
    summed = add(ctx, x, residual, summed_val.dtype)
    return norm.rms_norm(ctx, summed, weight, eps, unit_offset, normed_val.dtype), summed


@converter(trtllm.layer_norm.default)
def convert_layer_norm(ctx, node, x, weight, bias, eps):
    return norm.layer_norm(ctx, itensor(ctx, x), weight, bias, eps)
