"""CUDA implementation of `trtllm.paged_attention`: write the step's K/V into the paged cache, run the Triton
decode kernel over the single-token rows, and flash attention over each prefill's own tokens (one varlen call
for all prefills of the step; SDPA per sequence for fp32 or soft-capped models). A step of decodes only (every
CUDA-graph step) is one launch: the decode kernel rotates q and k (when the graph folded RoPE in), writes K/V
and attends; a step with prefills rotates and writes first, in their own launches.

Contract with the runner (model_runner.py): decode rows come first, and a prefill row starts at position 0,
so its keys are exactly its own tokens. No host synchronization happens here (sequence boundaries come from
the host copy of `query_start_loc`), which keeps decode steps capturable in CUDA graphs, and a step of one prompt:
its flash call's sequence bounds are a device tensor made once per prompt length, not copied from the host.

With an FP8 cache (`k_scale` / `v_scale`), K/V are quantized as they are written, and prefills attend to the
quantize-dequantized values, which is what the decode kernel later reads back: the write hands them back in the
[T, H, D] layout the varlen call takes (only when the step has prefills).
"""

from __future__ import annotations

import functools
import inspect

import torch
from torch import Tensor

from trtllm_compile.kernels.kv_cache import write_kv_cache
from trtllm_compile.kernels.paged_attention import StepKV, paged_decode_attention
from trtllm_compile.kernels.rope import rope
from trtllm_compile.ops.attention import attend
from trtllm_compile.ops.paged_attention import check_kv_scales, check_rotary

try:  # flash attention over variable-length sequences (torch >= 2.9, CUDA)
    from torch.nn.attention.varlen import varlen_attn

    # GQA: torch 2.11 takes fewer K/V heads as they come; later versions want it said (enable_gqa=True)
    _GQA = {"enable_gqa": True} if "enable_gqa" in inspect.signature(varlen_attn).parameters else {}
except ImportError:
    varlen_attn = None


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
    check_kv_scales(kv_cache, k_scale, v_scale)
    starts = host_query_start_loc.tolist()
    lengths = [end - start for start, end in zip(starts[:-1], starts[1:], strict=True)]
    num_decodes = next((i for i, n in enumerate(lengths) if n != 1), len(lengths))
    if cos is not None:
        check_rotary(q, cos, sin)
    if num_decodes == len(lengths):  # decodes only: the decode kernel rotates, writes the cache and attends
        return _decode_step(q, k, v, kv_cache, slot_mapping, block_tables, context_lens, layer, scale,
                            sliding_window, softcap, k_scale, v_scale, cos, sin, interleaved)  # fmt: skip
    if cos is not None:
        q, k = rope(q, cos, sin, interleaved), rope(k, cos, sin, interleaved)
    read_back = None
    if k_scale is not None:  # prefills attend to what the cache holds: fp8_qdq
        shape = (k.shape[2], k.shape[1], k.shape[3])  # [T, Hkv, D]
        read_back = tuple(torch.empty(shape, dtype=x.dtype, device=x.device) for x in (k, v))
    write_kv_cache(kv_cache, layer, k, v, slot_mapping, k_scale, v_scale, read_back)  # quantized with the scales
    if read_back is not None:
        k, v = (rows.transpose(0, 1)[None] for rows in read_back)  # [1, Hkv, T, D] views
    out = torch.empty_like(q, memory_format=torch.contiguous_format)  # the decode kernel writes [N, H, D] views
    if num_decodes:  # [N, H, D] views: the kernel reads q and writes out through their strides
        paged_decode_attention(
            _decode_rows(q, num_decodes),
            kv_cache[layer, 0],
            kv_cache[layer, 1],
            block_tables[:num_decodes],
            context_lens[:num_decodes],
            scale,
            softcap,
            sliding_window,
            out=out[0, :, :num_decodes].transpose(0, 1),
            k_scale=k_scale,
            v_scale=v_scale,
        )
    if num_decodes < len(lengths):
        _prefill_attention(q, k, v, out, starts[num_decodes:], scale, sliding_window, softcap)
    return out


def _decode_step(
    q, k, v, kv_cache, slot_mapping, block_tables, context_lens, layer, scale, sliding_window, softcap,
    k_scale, v_scale, cos, sin, interleaved,
) -> Tensor:  # fmt: skip
    """A step of single-token rows: one decode-kernel launch that also writes their K/V (see StepKV)."""
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    num_tokens = q.shape[2]
    rotary = (cos[0, 0], sin[0, 0]) if cos is not None else (None, None)  # [T, R]
    rotary = tuple(t if t is None or t.stride(-1) == 1 else t.contiguous() for t in rotary)
    step_kv = StepKV(_decode_rows(k, num_tokens), _decode_rows(v, num_tokens), slot_mapping, *rotary, interleaved)
    paged_decode_attention(
        _decode_rows(q, num_tokens),
        kv_cache[layer, 0],
        kv_cache[layer, 1],
        block_tables[:num_tokens],
        context_lens[:num_tokens],
        scale,
        softcap,
        sliding_window,
        out=out[0].transpose(0, 1),
        k_scale=k_scale,
        v_scale=v_scale,
        step_kv=step_kv,
    )
    return out


def _prefill_attention(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, starts: list[int], scale: float, sliding_window: int, softcap: float
) -> None:
    """Causal attention of each prefill (tokens starts[i]:starts[i+1] of q/k/v [1, H, T, D]) over its own tokens,
    into `out`: one flash-attention varlen call for all of them where it applies (a GPU, half precision, no
    soft-cap), else SDPA per sequence."""
    first, last = starts[0], starts[-1]
    flash = q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and softcap <= 0
    if varlen_attn is None or not flash:
        for start, end in zip(starts[:-1], starts[1:], strict=True):
            tokens = slice(start, end)
            q_rows, k_rows, v_rows = q[:, :, tokens], k[:, :, tokens], v[:, :, tokens]
            out[:, :, tokens] = attend(q_rows, k_rows, v_rows, None, scale, True, sliding_window, softcap)
        return
    q_rows, k_rows, v_rows = (x[0, :, first:last].transpose(0, 1).contiguous() for x in (q, k, v))  # [T, H, D]
    if len(starts) == 2:  # one prompt (the runner's prefill graphs): no host-to-device copy to capture
        cu_seqlens = _one_prompt_bounds(last - first, q.device)
    else:
        cu_seqlens = torch.tensor([s - first for s in starts], dtype=torch.int32).to(q.device, non_blocking=True)
    longest = max(end - start for start, end in zip(starts[:-1], starts[1:], strict=True))
    window = (sliding_window - 1 if sliding_window > 0 else -1, 0)  # (left, right): causal, the last W positions
    attended = varlen_attn(
        q_rows, k_rows, v_rows, cu_seqlens, cu_seqlens, longest, longest, scale=scale, window_size=window, **_GQA
    )
    out[0, :, first:last] = attended.transpose(0, 1)


@functools.cache
def _one_prompt_bounds(tokens: int, device: torch.device) -> Tensor:
    """[0, tokens] on `device`, kept: a CUDA graph that captured it reads it at every replay. At most one per prompt
    length a step allows (max_num_tokens)."""
    return torch.tensor([0, tokens], dtype=torch.int32).pin_memory().to(device, non_blocking=True)


def _decode_rows(q: Tensor, num_decodes: int) -> Tensor:
    """The decode tokens of q [1, H, T, D] as [num_decodes, H, D] (a view when the head dim is contiguous)."""
    rows = q[0, :, :num_decodes].transpose(0, 1)
    return rows if rows.stride(-1) == 1 else rows.contiguous()
