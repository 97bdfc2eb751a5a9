"""Normalization ops: RMSNorm (Llama and Gemma forms), residual-add + RMSNorm, LayerNorm."""

from __future__ import annotations

import torch
from torch import Tensor

from trtllm_compile.ops.library import custom_op


def rms_norm_reference(x: Tensor, weight: Tensor, eps: float, unit_offset: bool) -> Tensor:
    # The two Hugging Face forms differ in where the cast back happens, which matters in bf16:
    # Llama casts the normalized value before scaling, Gemma scales by (1 + w) in fp32 and casts last.
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    if unit_offset:
        return (normed * (1.0 + weight.float())).to(x.dtype)
    return weight * normed.to(x.dtype)


@custom_op("trtllm::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float, unit_offset: bool = False) -> Tensor:
    """RMSNorm over the last dim; `unit_offset` selects Gemma's `(1 + weight)` scaling."""
    return rms_norm_reference(x, weight, eps, unit_offset)


@rms_norm.register_fake
def _(x: Tensor, weight: Tensor, eps: float, unit_offset: bool = False) -> Tensor:
    return torch.empty_like(x, dtype=torch.promote_types(x.dtype, weight.dtype) if not unit_offset else x.dtype)


@custom_op("trtllm::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: Tensor, residual: Tensor, weight: Tensor, eps: float, unit_offset: bool = False
) -> tuple[Tensor, Tensor]:
    """Returns (rms_norm(x + residual), x + residual): the residual stream and its normalized value."""
    summed = x + residual
    return rms_norm_reference(summed, weight, eps, unit_offset), summed


@add_rms_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, eps: float, unit_offset: bool = False):
    summed = torch.empty_like(x, dtype=torch.promote_types(x.dtype, residual.dtype))
    normed_dtype = summed.dtype if unit_offset else torch.promote_types(summed.dtype, weight.dtype)
    return torch.empty_like(summed, dtype=normed_dtype), summed


@custom_op("trtllm::layer_norm", mutates_args=())
def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """LayerNorm over the last dim."""
    return torch.nn.functional.layer_norm(x, (x.shape[-1],), weight, bias, eps)


@layer_norm.register_fake
def _(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    return torch.empty_like(x)
