"""Attention -> TensorRT's native attention layer (IAttention), once per decoder layer.

`trtllm.attention` (prefill: causal over the new tokens, top-left aligned as SDPA) and `trtllm_kv.cached_attention`
(decode: over the KV cache, bottom-right aligned per sequence). GQA goes in as is; sliding windows become a mask
built from aranges; decode without a window uses per-sequence key lengths and no mask at all.
"""

from __future__ import annotations

import torch

from trtllm_compile import ops  # noqa: F401  (registers the trtllm ops)
from trtllm_compile.fx_utils import val
from trtllm_compile.passes import insert_kv_cache_tensorrt  # noqa: F401  (registers the trtllm_kv ops)
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import attention as attn
from trtllm_compile.tensorrt.impl.elementwise import binary
from trtllm_compile.tensorrt.impl.shape import known_size, size
from trtllm_compile.tensorrt.impl.tensors import dtype_of, itensor

_ARG_NAMES = ("q", "k", "v", "attn_mask", "scale", "is_causal", "sliding_window", "softcap")
_DEFAULTS = {"attn_mask": None, "is_causal": False, "sliding_window": -1, "softcap": 0.0}


def _attention_args(node) -> dict:
    return _DEFAULTS | dict(zip(_ARG_NAMES, node.args, strict=False)) | node.kwargs


def _native_attention(node) -> str | None:
    args = _attention_args(node)
    if args["softcap"] and args["softcap"] > 0:
        return "logit soft-capping has no form in TensorRT's attention layer"
    mask = args["attn_mask"]
    if mask is not None and val(mask).dtype != torch.bool and (args["is_causal"] or args["sliding_window"] > 0):
        return "an additive mask together with causal/sliding-window masking"
    return None


@converter(torch.ops.trtllm.attention.default, validator=_native_attention)
def convert_attention(ctx, node, q, k, v, attn_mask=None, scale=None, is_causal=False, sliding_window=-1, softcap=0.0):
    q, k, v = (itensor(ctx, t) for t in (q, k, v))
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    mask = itensor(ctx, attn_mask) if attn_mask is not None else None
    if mask is not None and dtype_of(mask) != torch.bool:
        mask = itensor(ctx, mask, dtype_of(q))
    if sliding_window > 0 or (mask is not None and is_causal):
        # Sizes read off q/k themselves: with sizes read from a network input, tensorrt_rtx 1.7's compiler rejected
        # this mask (while the cache mask below needs the opposite; both are covered by tests).
        visible = attn.causal_mask(ctx, size(ctx, q, 2), size(ctx, k, 2), sliding_window if sliding_window > 0 else -1)
        if not is_causal:  # a window alone: keys within the window on either side
            raise NotImplementedError("a non-causal sliding window")
        mask = visible if mask is None else binary(ctx, "AND", mask, visible, torch.bool)
    return attn.attention(ctx, q, k, v, scale, causal=is_causal, mask=mask)


def _cached_native(node) -> str | None:
    softcap = node.args[6] if len(node.args) > 6 else node.kwargs.get("softcap", 0.0)
    return "logit soft-capping has no form in TensorRT's attention layer" if softcap > 0 else None


@converter(torch.ops.trtllm_kv.cached_attention.default, validator=_cached_native)
def convert_cached_attention(ctx, node, q, k_cache, v_cache, kv_lengths, scale, sliding_window=-1, softcap=0.0):
    q, k_cache, v_cache, kv_lengths = (itensor(ctx, t) for t in (q, k_cache, v_cache, kv_lengths))
    q_len = known_size(ctx, q, 2, val(node.args[0]).shape[2])
    if isinstance(q_len, int) and q_len == 1 and sliding_window <= 0:  # one new token (decode): key lengths say it all
        return attn.attention(ctx, q, k_cache, v_cache, scale, kv_lengths=kv_lengths)
    # Every layer attends over the same positions: one mask per (query length, capacity, lengths, window).
    capacity = known_size(ctx, k_cache, 2, val(node.args[1]).shape[2])
    key = ("cache_mask", str(val(node.args[0]).shape[2]), str(capacity), node.args[3], sliding_window)
    if key not in ctx.cache:
        ctx.cache[key] = attn.cache_mask(ctx, q_len, capacity, kv_lengths, sliding_window)
    return attn.attention(ctx, q, k_cache, v_cache, scale, mask=ctx.cache[key])
