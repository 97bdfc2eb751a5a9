"""Rotary position embedding, in Hugging Face's rotate-half form and GPT-J's interleaved form."""

from __future__ import annotations

import torch
from torch import Tensor

from trtllm_compile.ops.library import custom_op


def rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_every_two(x: Tensor) -> Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


@custom_op("trtllm::rope", mutates_args=())
def rope(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """Rotate the first `cos.shape[-1]` features of `x`; the rest pass through (partial rotary).

    `cos`/`sin` hold one value per rotated feature (HF's `cat(freqs, freqs)` layout, or GPT-J's
    repeat-interleaved one) and broadcast against `x[..., :rotary_dim]`, so the op is layout-agnostic.
    """
    return rope_reference(x, cos, sin, interleaved)


def check_rotary_dim(rotary_dim: int, head_dim: int) -> None:
    """The rotated features come in pairs and are a leading slice of the head."""
    if rotary_dim % 2 or rotary_dim > head_dim:
        raise ValueError(f"rotary dim {rotary_dim} must be even and <= head dim {head_dim}")


def rope_reference(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    """The op's PyTorch body, callable on any device (the kernels' tests compare against it on the GPU)."""
    rotary_dim = cos.shape[-1]
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    rotated = rotate_every_two(x_rot) if interleaved else rotate_half(x_rot)
    out = (x_rot * cos + rotated * sin).to(x.dtype)
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


@rope.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = False) -> Tensor:
    # A partial rotary concatenates into a fresh contiguous tensor; a full one keeps x's layout.
    return x.new_empty(x.shape) if cos.shape[-1] < x.shape[-1] else torch.empty_like(x)
