"""Attention over a paged KV cache, for a step that mixes prefills and decodes of many sequences.

Tokens of all sequences in a step are flattened into one row ([1, H, T, D], sequence n owning tokens
`query_start_loc[n]:query_start_loc[n+1]`). The op first writes the step's keys/values into the cache at
`slot_mapping` (slot = block * block_size + offset), then lets each sequence's queries attend to its first
`context_lens[n]` cached positions, causally: the queries are the last positions of their sequence.

With `k_scale` / `v_scale` (per-tensor, calibrated) the cache is FP8 E4M3: keys are stored as
`fp8_quantize(k, k_scale)` and read back as `fp8.float() * k_scale` in the query dtype, which is exactly
`trtllm::fp8_qdq`, so an FP8 cache computes what the quantize-dequantize before a full-precision cache did.

With `cos` / `sin` (passes/fold_rope_into_paged_attention.py) q and k arrive unrotated and the op applies
`trtllm::rope` to both first: a decode step's kernel then rotates, writes the cache and attends in one launch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trtllm_compile.ops.attention import attend, visibility_mask
from trtllm_compile.ops.library import custom_op
from trtllm_compile.ops.quant import fp8_quantize
from trtllm_compile.ops.rope import check_rotary_dim, rope_reference

FP8_KV_DTYPE = torch.float8_e4m3fn


def store_kv(x: Tensor, scale: Tensor | None, cache_dtype: torch.dtype) -> Tensor:
    """What the cache holds for `x`: x in the cache dtype, or x / scale rounded to FP8 as `fp8_qdq` rounds it."""
    return fp8_quantize(x, scale).to(cache_dtype) if scale is not None else x.to(cache_dtype)


def load_kv(stored: Tensor, scale: Tensor | None, dtype: torch.dtype) -> Tensor:
    """Cached keys or values back in the compute dtype: `fp8_qdq`'s dequantize (x.float() * scale, then cast)."""
    return (stored.float() * scale.float()).to(dtype) if scale is not None else stored.to(dtype)


def check_kv_scales(kv_cache: Tensor, k_scale: Tensor | None, v_scale: Tensor | None) -> None:
    if (k_scale is None) != (v_scale is None):
        raise ValueError("an FP8 KV cache needs both k_scale and v_scale (or neither)")
    if kv_cache.dtype == FP8_KV_DTYPE and k_scale is None:
        raise ValueError(
            "the KV cache is float8_e4m3fn but paged_attention got no k_scale / v_scale; quantize the graph "
            "with QuantConfig(kv_cache='fp8') so insert_paged_attention passes the calibrated scales"
        )


def check_rotary(q: Tensor, cos: Tensor | None, sin: Tensor | None) -> None:
    """cos / sin must be one [R] row per token ([1, 1, T, R]), R even and at most the head dim."""
    if sin is None or cos.shape != sin.shape:
        raise ValueError("paged_attention's rotary embedding needs cos and sin of one shape")
    tokens = q.shape[2]
    if cos.dim() != 4 or cos.shape[:3] != (1, 1, tokens):
        raise ValueError(f"paged_attention takes cos / sin of shape [1, 1, {tokens}, R], got {tuple(cos.shape)}")
    check_rotary_dim(cos.shape[-1], q.shape[3])


def write_kv_cache(
    kv_cache: Tensor,
    layer: int,
    k: Tensor,
    v: Tensor,
    slot_mapping: Tensor,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
) -> None:
    """kv_cache: [layers, 2, num_blocks, block_size, Hkv, D]; k/v: [1, Hkv, T, D]; scales: FP8 cache."""
    for which, new, scale in ((0, k, k_scale), (1, v, v_scale)):
        write_rows(kv_cache[layer, which], new[0].transpose(0, 1), slot_mapping, scale)


def write_rows(cache: Tensor, rows: Tensor, slot_mapping: Tensor, scale: Tensor | None) -> None:
    """rows [T, Hkv, D] into cache [num_blocks, block_size, Hkv, D] at their slots, as `store_kv` stores them."""
    flat = cache.view(-1, *cache.shape[-2:])
    stored = store_kv(rows, scale, flat.dtype)
    if flat.dtype == FP8_KV_DTYPE:  # index_copy_ has no float8 kernels: copy the bytes
        flat, stored = flat.view(torch.uint8), stored.view(torch.uint8)
    flat.index_copy_(0, slot_mapping.long(), stored)


def gather_sequence_kv(kv_cache: Tensor, layer: int, block_table: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The first `length` cached keys and values of one sequence, as stored: [1, Hkv, length, D]."""
    block_size = kv_cache.shape[3]
    blocks = block_table[: (length + block_size - 1) // block_size]
    kv = kv_cache[layer].index_select(1, blocks).flatten(1, 2)[:, :length].transpose(1, 2)  # [2, Hkv, length, D]
    return kv[0, None], kv[1, None]


@custom_op("trtllm::paged_attention", mutates_args=("kv_cache",))
def paged_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_cache: Tensor,
    slot_mapping: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    host_query_start_loc: Tensor,
    layer: int,
    scale: float,
    sliding_window: int = -1,
    softcap: float = 0.0,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    cos: Tensor | None = None,
    sin: Tensor | None = None,
    interleaved: bool = False,
) -> Tensor:
    """q: [1, Hq, T, D], k/v: [1, Hkv, T, D] -> [1, Hq, T, D]; `host_query_start_loc` is a CPU tensor.
    `k_scale` / `v_scale` ([] float32): the cache is float8_e4m3fn and holds K / k_scale, V / v_scale.
    `cos` / `sin` ([1, 1, T, R]): q and k are rotated first, as `trtllm::rope(x, cos, sin, interleaved)`."""
    check_kv_scales(kv_cache, k_scale, v_scale)
    if cos is not None:
        check_rotary(q, cos, sin)
        q, k = rope_reference(q, cos, sin, interleaved), rope_reference(k, cos, sin, interleaved)
    write_kv_cache(kv_cache, layer, k, v, slot_mapping, k_scale, v_scale)
    out = torch.empty_like(q)
    starts = host_query_start_loc.tolist()
    for n, (start, end, length) in enumerate(zip(starts[:-1], starts[1:], context_lens.tolist(), strict=True)):
        keys, values = gather_sequence_kv(kv_cache, layer, block_tables[n], length)
        keys, values = load_kv(keys, k_scale, q.dtype), load_kv(values, v_scale, q.dtype)
        out[:, :, start:end] = _attend(q[:, :, start:end], keys, values, scale, sliding_window, softcap)
    return out


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, sliding_window: int, softcap: float) -> Tensor:
    q_len, kv_len = q.shape[-2], k.shape[-2]
    if q_len == 1:  # a decode sees every cached key, or the window's last ones: a slice, no mask to build
        first = max(0, kv_len - sliding_window) if sliding_window > 0 else 0
        return attend(q, k[:, :, first:], v[:, :, first:], None, scale, softcap=softcap)
    if q_len == kv_len and sliding_window <= 0:  # a prompt with nothing cached before it: plain causal
        return attend(q, k, v, None, scale, is_causal=True, softcap=softcap)
    # Queries are the last q_len positions: causal and window masks align to the end of the keys.
    allowed = visibility_mask(kv_len, kv_len, True, sliding_window, q.device)[kv_len - q_len :]
    return attend(q, k, v, allowed, scale, softcap=softcap)


@paged_attention.register_fake
def _(
    q,
    k,
    v,
    kv_cache,
    slot_mapping,
    block_tables,
    context_lens,
    host_query_start_loc,
    layer,
    scale,
    sliding_window=-1,
    softcap=0.0,
    k_scale=None,
    v_scale=None,
    cos=None,
    sin=None,
    interleaved=False,
):
    return torch.empty_like(q)
