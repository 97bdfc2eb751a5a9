"""Writing a step's keys and values into the paged KV cache: one launch for K and V of every token.

Token t's K and V rows ([Hkv, D], any strides with a contiguous head dim) go to slot `slot_mapping[t]` of the
layer's caches (slot = block * block_size + offset). Rows already in the cache's dtype are copied (float8 ones
as uint8, which every Triton target can load); with `k_scale` / `v_scale` an FP8 cache gets them quantized as
`ops.quant.fp8_quantize` does (times the correctly rounded 1 / scale, saturated to +-448, rounded to E4M3), and
the same launch can hand back what the cache now holds, dequantized (`read_back`): the K/V a prefill attends to.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, pdl
from trtllm_compile.kernels.pdl import start_next_then_wait
from trtllm_compile.kernels.quantize import inverse_scale, to_e4m3
from trtllm_compile.ops.paged_attention import FP8_KV_DTYPE


@triton.jit
def _write_kv_kernel(
    k_ptr, v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, k_scale_ptr, v_scale_ptr, k_back_ptr, v_back_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh, stride_slot, stride_head,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    QUANTIZE: tl.constexpr, READ_BACK: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    start_next_then_wait(PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    heads = tl.arange(0, BLOCK_H)[:, None]
    dims = tl.arange(0, BLOCK_D)[None, :]
    mask = (heads < NUM_HEADS) & (dims < HEAD_DIM)
    k = tl.load(k_ptr + t * stride_kt + heads * stride_kh + dims, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + heads * stride_vh + dims, mask=mask)
    if QUANTIZE:
        k, v = to_e4m3(k, inverse_scale(k_scale_ptr)), to_e4m3(v, inverse_scale(v_scale_ptr))
    if READ_BACK:  # `load_kv`: the fp32 product of the stored value and its scale, rounded to the rows' dtype
        back = (t * NUM_HEADS + heads) * HEAD_DIM + dims
        k_back = k.to(tl.float32) * tl.load(k_scale_ptr)
        v_back = v.to(tl.float32) * tl.load(v_scale_ptr)
        tl.store(k_back_ptr + back, k_back.to(k_back_ptr.dtype.element_ty), mask=mask)
        tl.store(v_back_ptr + back, v_back.to(v_back_ptr.dtype.element_ty), mask=mask)
    where = slot * stride_slot + heads * stride_head + dims
    tl.store(k_cache_ptr + where, k, mask=mask)
    tl.store(v_cache_ptr + where, v, mask=mask)


INTERPRETED: bool = is_interpreted(_write_kv_kernel)


def _as_copyable(t: Tensor) -> Tensor:
    return t.view(torch.uint8) if t.dtype.itemsize == 1 else t


def write_kv_cache(
    kv_cache: Tensor,
    layer: int,
    k: Tensor,
    v: Tensor,
    slot_mapping: Tensor,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    read_back: tuple[Tensor, Tensor] | None = None,
) -> None:
    """kv_cache: [layers, 2, num_blocks, block_size, Hkv, D]; k/v: [1, Hkv, T, D]; slot_mapping: [T] int;
    k_scale / v_scale ([] float32): quantize into a float8_e4m3fn cache. What `ops.paged_attention.write_kv_cache`
    does with a quantize and two index_copy launches, in one. `read_back` (with a quantizing write): contiguous
    [T, Hkv, D] tensors filled with what the cache now holds, dequantized (`ops.paged_attention.load_kv`)."""
    _, _, num_blocks, block_size, num_heads, head_dim = kv_cache.shape
    quantize = k_scale is not None and v_scale is not None and kv_cache.dtype == FP8_KV_DTYPE
    if not quantize and (k.dtype != kv_cache.dtype or v.dtype != kv_cache.dtype):
        raise ValueError(
            f"k {k.dtype} / v {v.dtype} must be in the cache's dtype {kv_cache.dtype}, or come with k_scale and "
            "v_scale for a float8_e4m3fn cache"
        )
    k_rows, v_rows = k[0].transpose(0, 1), v[0].transpose(0, 1)  # [T, Hkv, D] views
    if k_rows.shape != v_rows.shape or k_rows.shape[1:] != (num_heads, head_dim):
        raise ValueError(f"k {tuple(k.shape)} / v {tuple(v.shape)} do not fit a cache of {num_heads} x {head_dim}")
    k_rows = k_rows if k_rows.stride(-1) == 1 else k_rows.contiguous()
    v_rows = v_rows if v_rows.stride(-1) == 1 else v_rows.contiguous()
    num_tokens = k_rows.shape[0]
    if read_back is not None:
        if not quantize:
            raise ValueError("read_back dequantizes what an FP8 write stored: it needs k_scale / v_scale")
        if any(t.shape != k_rows.shape or not t.is_contiguous() for t in read_back):
            raise ValueError(f"read_back takes two contiguous {tuple(k_rows.shape)} tensors")
    if num_tokens == 0:
        return
    caches = kv_cache[layer].view(2, num_blocks * block_size, num_heads, head_dim)
    if quantize:
        k_cache, v_cache = caches[0], caches[1]
        k_scale, v_scale = k_scale.float().reshape(()), v_scale.float().reshape(())
    else:  # copies: the scale pointers are not read
        k_cache, v_cache = _as_copyable(caches[0]), _as_copyable(caches[1])
        k_rows, v_rows = _as_copyable(k_rows), _as_copyable(v_rows)
        k_scale = v_scale = slot_mapping
    k_back, v_back = read_back if read_back is not None else (k_rows, v_rows)  # unwritten without READ_BACK
    _write_kv_kernel[(num_tokens,)](
        k_rows, v_rows, k_cache, v_cache, slot_mapping, k_scale, v_scale, k_back, v_back,
        k_rows.stride(0), k_rows.stride(1), v_rows.stride(0), v_rows.stride(1), k_cache.stride(0), k_cache.stride(1),
        NUM_HEADS=num_heads, HEAD_DIM=head_dim,
        BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_D=triton.next_power_of_2(head_dim),
        QUANTIZE=quantize, READ_BACK=read_back is not None, num_warps=4, **pdl.launch_args(k.device),
    )  # fmt: skip
