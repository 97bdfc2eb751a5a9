"""Scaled dot-product attention with GQA/MQA, causal and sliding-window masks and logit soft-capping."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.ops.library import custom_op


def visibility_mask(q_len: int, kv_len: int, is_causal: bool, sliding_window: int, device) -> Tensor | None:
    """Boolean [q_len, kv_len] mask of allowed positions, aligned top-left like SDPA's `is_causal`.

    Query i sits at position i; a KV cache's bottom-right alignment is the last `q_len` rows of the square mask.
    """
    if not is_causal and sliding_window <= 0:
        return None
    q_pos = torch.arange(q_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
    if is_causal:
        allowed &= k_pos <= q_pos
    if sliding_window > 0:
        allowed &= q_pos - k_pos < sliding_window
    return allowed


def combined_mask(attn_mask: Tensor | None, visible: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    if visible is None:
        return attn_mask
    if attn_mask is None:
        return visible
    if attn_mask.dtype == torch.bool:
        return attn_mask & visible
    return attn_mask.to(dtype).masked_fill(~visible, torch.finfo(dtype).min)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None,
    scale: float,
    is_causal: bool = False,
    sliding_window: int = -1,
    softcap: float = 0.0,
) -> Tensor:
    """q: [B, Hq, Sq, D], k/v: [B, Hkv, Skv, D] with Hq a multiple of Hkv -> [B, Hq, Sq, D].

    `attn_mask` is boolean (True = attend) or additive, broadcastable to [B, Hq, Sq, Skv]. `is_causal` and
    `sliding_window` (> 0) align top-left, exactly as SDPA's `is_causal` (the call this op replaces).
    """
    if softcap <= 0.0 and attn_mask is None and sliding_window <= 0:
        # No mask to build: SDPA's own causal path (on CPU, 2x faster than a [S, S] mask at 4.5k tokens)
        return F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=is_causal, enable_gqa=True).contiguous()
    visible = visibility_mask(q.shape[-2], k.shape[-2], is_causal, sliding_window, q.device)
    mask = combined_mask(attn_mask, visible, q.dtype)
    if softcap <= 0.0:
        # contiguous: SDPA's output layout depends on the backend it picks; the op's is fixed.
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True).contiguous()
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.tanh((q @ k.transpose(-1, -2)) * scale / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return (torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v).contiguous()


# The fused attention op, on every device: `attend` (which the CUDA paged attention also calls directly).
attention = custom_op("trtllm::attention", attend, mutates_args=())


@attention.register_fake
def _(q, k, v, attn_mask, scale, is_causal=False, sliding_window=-1, softcap=0.0) -> Tensor:
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=v.dtype)
