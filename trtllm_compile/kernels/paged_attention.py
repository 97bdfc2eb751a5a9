"""Paged decode attention with GQA, flash-decoding split-K, soft-capping and sliding windows.

One program per (sequence, KV head, split) serves all query heads of the group, so each K/V row is read once.
Positions are gathered token by token through the block table (slot = block * PAGE + pos % PAGE), which
keeps the tile size independent of the page size. When sequences x KV heads cannot fill the GPU, each
sequence's context is split into up to `num_splits` equal partitions of at least _MIN_PARTITION tokens, whose
partial (max, sum, unnormalized output) the last split of each (sequence, KV head) to finish merges (counted in
a device buffer of arrivals; this saved a second kernel a layer). The partitions are sized in the kernel
from the sequence's actual length, so a CUDA graph captured for the longest context still spreads a long
context over every split, and a short one over few (the others return at once). Groups of more than two query
heads multiply on the tensor cores, padded to 16 rows; for one or two the plan chooses. Padded to 16 rows, a
Llama-2-7B head (MHA) streamed its bf16 cache at 2.93-3.02 TB/s against 2.85-2.97 on CUDA cores, and an FP8 cache
at 2.28-2.67 against 1.74-1.98 (H100, 64 to 512 sequences of 512 tokens, benchmarks/decode_attention_plans.py).

With the step's own K/V (`StepKV`: a decode-only step), each program loads its sequence length, block ids and first
K/V tile before it waits for the kernel before (PDL): every row but the step's was written by an earlier step, and
the step's row, which this kernel writes, replaces its stale copy in registers. The tile's loads then run under
the QKV GEMM's tail: 50 us of a 1.96 ms Llama-2-7B INT4 batch-1 step (docs/benchmarks.md run 79).

An FP8 cache (float8_e4m3fn, with per-tensor k_scale / v_scale) is read as its codes, which every q dtype holds
exactly, and the scales multiply the scores (k_scale) and the output (v_scale) instead of each element: the
reference dequantizes each element and rounds it to q's dtype (`trtllm::fp8_qdq`'s read), which the kernel skips.
Scaling every element cost more conversions than the loads could hide: at 512 sequences the FP8 cache streamed at
1.3 TB/s, half the bf16 cache's rate (H100). FP8 loads need a GPU of compute capability 8.9 or newer (Triton's
float8e4nv).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, pdl, plans_fixed, tl_dtype
from trtllm_compile.kernels.activation import tanh
from trtllm_compile.kernels.pdl import start_next_then_wait
from trtllm_compile.kernels.quantize import inverse_scale, to_e4m3
from trtllm_compile.kernels.rope import rotate
from trtllm_compile.kernels.tuning import cached_plan
from trtllm_compile.ops.paged_attention import load_kv, write_rows
from trtllm_compile.ops.rope import check_rotary_dim, rope_reference


class StepKV(NamedTuple):
    """The step's own K/V, which the decode kernel writes into the cache before attending (one launch instead of
    a write kernel and RoPE kernels before it): rows [N, Hkv, D] (contiguous head dim) going to `slot_mapping`
    [N]. With `cos` / `sin` ([N, R] rows of the tokens' rotary embedding) k is rotated before it is stored and q
    before it attends, as `trtllm::rope(x, cos, sin, interleaved)` does."""

    k: Tensor
    v: Tensor
    slot_mapping: Tensor
    cos: Tensor | None = None
    sin: Tensor | None = None
    interleaved: bool = False

    def check(self, q: Tensor, k_cache: Tensor) -> None:
        rows = (q.shape[0], k_cache.shape[2], k_cache.shape[3])
        if self.k.shape != rows or self.v.shape != rows or self.slot_mapping.shape != rows[:1]:
            raise ValueError(
                f"step K/V {tuple(self.k.shape)} / {tuple(self.v.shape)} and slots {tuple(self.slot_mapping.shape)} "
                f"must be {rows} and ({rows[0]},) for q {tuple(q.shape)}"
            )
        if self.cos is not None:
            rotary = self.cos.shape[-1]
            if self.sin is None or self.sin.shape != self.cos.shape or self.cos.shape != (rows[0], rotary):
                raise ValueError(f"cos / sin must both be [{rows[0]}, R], got {tuple(self.cos.shape)}")
            check_rotary_dim(rotary, rows[2])
        if any(t is not None and t.stride(-1) != 1 for t in (self.k, self.v, self.cos, self.sin)):
            raise ValueError("step K/V and cos / sin need a contiguous last dim")


class DecodePlan(NamedTuple):
    """How the decode kernel runs: K/V positions a tile loads, warps, pipeline stages, and whether one or two
    query heads a KV head take the tensor cores (padded to 16 rows) rather than CUDA cores; larger groups
    always take them."""

    block_n: int
    num_warps: int
    num_stages: int
    tensor_cores: bool = False

    def __str__(self) -> str:
        return f"N{self.block_n} w{self.num_warps} s{self.num_stages}{' tc' if self.tensor_cores else ''}"


# The first is the default where nothing is timed (fixed plans, TRTLLM_TRITON_AUTOTUNE=0, the interpreter): 32-token
# tiles on 2 warps were the fastest CUDA-core plan at every load of an H100 microbenchmark (Llama-2-7B heads, 1 to
# 384 sequences); the same tiles on the tensor cores won where timed since.
_TILES = ((32, 2, 2), (64, 4, 2), (32, 4, 2), (64, 8, 2), (128, 8, 2), (64, 4, 3))
PLANS = [DecodePlan(*tile) for tile in _TILES] + [DecodePlan(*tile, tensor_cores=True) for tile in _TILES]
# Tokens a sequence of the timed sample holds. A plan is timed on a sample rather than on the call's batch: the
# first call of a shape is usually a CUDA-graph warm-up, whose padding rows are empty and time nothing.
TUNE_CONTEXT = 512
_MIN_PARTITION = 32  # tokens per split: below this the merge costs more than the parallelism gains (H100)


@triton.jit
def _paged_decode_kernel(
    q_ptr, k_ptr, v_ptr, bt_ptr, lens_ptr, out_ptr, m_ptr, l_ptr, acc_ptr, count_ptr, k_scale_ptr, v_scale_ptr,
    new_k_ptr, new_v_ptr, slot_ptr, cos_ptr, sin_ptr,
    stride_qn, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_on, stride_oh, stride_nkn, stride_nkh, stride_nvn, stride_nvh, stride_cos, stride_sin,
    num_q_heads, num_splits, scale, softcap, sliding_window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, PAGE: tl.constexpr, SPLIT: tl.constexpr,
    SOFTCAP: tl.constexpr, WINDOW: tl.constexpr, USE_DOT: tl.constexpr, FP32: tl.constexpr,
    MIN_PARTITION: tl.constexpr, KV_FP8: tl.constexpr, NEW_KV: tl.constexpr, ROTARY_HALF: tl.constexpr,
    INTERLEAVED: tl.constexpr, ROTARY_DTYPE: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    if not NEW_KV:
        start_next_then_wait(PDL)
    n = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(lens_ptr + n)
    first = 0
    if WINDOW:
        first = tl.maximum(seq_len - sliding_window, 0)
    partition = tl.maximum(tl.cdiv(seq_len - first, num_splits), MIN_PARTITION)  # short: fewer busy splits
    lo = first + split * partition
    hi = tl.minimum(lo + partition, seq_len)

    offs_g, offs_d = tl.arange(0, BLOCK_G), tl.arange(0, BLOCK_D)
    heads = kv_head * GROUP + offs_g
    g_ok, d_ok = offs_g < GROUP, offs_d < HEAD_DIM
    k_head, v_head = k_ptr + kv_head * stride_kh, v_ptr + kv_head * stride_vh
    bt_row = bt_ptr + n * stride_bt
    pos = lo + tl.arange(0, BLOCK_N)
    block = tl.load(bt_row + pos // PAGE, mask=pos < hi, other=0)
    if NEW_KV:
        # The step writes its own K/V row below, so every other row the step reads was written by an earlier
        # step: the first tile is loaded before waiting for the kernel before (PDL), under its tail.
        k_first, v_first = _load_tile(k_head, v_head, block, pos, pos < hi, offs_d, d_ok,
                                      stride_kb, stride_ks, stride_vb, stride_vs, PAGE)  # fmt: skip
        block = tl.load(bt_row + (pos + BLOCK_N) // PAGE, mask=pos + BLOCK_N < hi, other=0)
        start_next_then_wait(PDL)
    q_mask = g_ok[:, None] & d_ok[None, :]
    q_rows = q_ptr + n * stride_qn + heads[:, None] * stride_qh
    q = tl.load(q_rows + offs_d[None, :], mask=q_mask, other=0.0)
    if ROTARY_HALF:  # q and the step's k arrive unrotated: `trtllm::rope` with this token's cos / sin row
        if INTERLEAVED:  # pairs (2j, 2j + 1)
            first_of_pair, partner = offs_d % 2 == 0, offs_d ^ 1
        else:  # halves (j, j + R/2)
            first_of_pair = offs_d < ROTARY_HALF
            partner = tl.where(first_of_pair, offs_d + ROTARY_HALF, offs_d - ROTARY_HALF)
        sign = tl.where(first_of_pair, -1.0, 1.0)
        rotated = offs_d < 2 * ROTARY_HALF  # the features past R pass through
        cos = tl.load(cos_ptr + n * stride_cos + offs_d, mask=rotated, other=0.0).to(tl.float32)
        sin = tl.load(sin_ptr + n * stride_sin + offs_d, mask=rotated, other=0.0).to(tl.float32)
        q_partner = tl.load(q_rows + partner[None, :], mask=q_mask & rotated[None, :], other=0.0).to(tl.float32)
        q_rotated = rotate(q.to(tl.float32), q_partner, cos[None, :], sin[None, :], sign[None, :],
                           ROTARY_DTYPE, q.dtype)  # fmt: skip
        q = tl.where(rotated[None, :], q_rotated, q)
    if NEW_KV:  # the step's K/V row goes into the cache here, by the program whose partition holds its position
        k_new = tl.load(new_k_ptr + n * stride_nkn + kv_head * stride_nkh + offs_d, mask=d_ok, other=0.0)
        v_new = tl.load(new_v_ptr + n * stride_nvn + kv_head * stride_nvh + offs_d, mask=d_ok, other=0.0)
        if ROTARY_HALF:
            k_partner = tl.load(new_k_ptr + n * stride_nkn + kv_head * stride_nkh + partner, mask=rotated)
            k_rotated = rotate(k_new.to(tl.float32), k_partner.to(tl.float32), cos, sin, sign,
                               ROTARY_DTYPE, k_new.dtype)  # fmt: skip
            k_new = tl.where(rotated, k_rotated, k_new)
        if KV_FP8:
            k_new, v_new = to_e4m3(k_new, inverse_scale(k_scale_ptr)), to_e4m3(v_new, inverse_scale(v_scale_ptr))
        if (lo < hi) & (hi == seq_len):
            slot = tl.load(slot_ptr + n).to(tl.int64)
            block_new, in_page_new = slot // PAGE, slot % PAGE
            tl.store(k_head + block_new * stride_kb + in_page_new * stride_ks + offs_d, k_new, mask=d_ok)
            tl.store(v_head + block_new * stride_vb + in_page_new * stride_vs + offs_d, v_new, mask=d_ok)
        tl.debug_barrier()  # the tiles after the first read the row back: its stores must be visible to them
    if KV_FP8 and USE_DOT and not FP32:
        # E4M3 codes become fp16 in one instruction a pair (bf16 takes three), so the tensor cores multiply in
        # fp16, which holds the codes and probabilities exactly. q is scaled first (the softmax scale, 1 / sqrt(D)
        # in most models), so that bf16 q values up to 65504 / scale fit fp16's range.
        q = (q.to(tl.float32) * scale).to(tl.float16)
        scale = 1.0
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    if KV_FP8:  # scores of the K codes times k_scale; the output of the V codes times v_scale (at the end)
        scale = scale * tl.load(k_scale_ptr).to(tl.float32)

    rest = lo
    if NEW_KV:
        if lo < hi:  # the first tile, loaded before the step's row was written: that row from registers
            is_new = (pos == seq_len - 1)[:, None]
            k_first = tl.where(is_new, k_new[None, :], k_first)
            v_first = tl.where(is_new, v_new[None, :], v_first)
            m_i, l_i, acc = _attend_tile(q, k_first, v_first, pos < hi, m_i, l_i, acc, scale, softcap,
                                         SOFTCAP, USE_DOT, FP32, KV_FP8)  # fmt: skip
        rest = lo + BLOCK_N
    for start in range(rest, hi, BLOCK_N):
        pos = start + tl.arange(0, BLOCK_N)
        p_ok = pos < hi
        # K and V issued together, then the next tile's block ids: all in flight while this tile's math runs
        k, v = _load_tile(k_head, v_head, block, pos, p_ok, offs_d, d_ok, stride_kb, stride_ks, stride_vb, stride_vs,
                          PAGE)  # fmt: skip
        block = tl.load(bt_row + (pos + BLOCK_N) // PAGE, mask=pos + BLOCK_N < hi, other=0)
        m_i, l_i, acc = _attend_tile(q, k, v, p_ok, m_i, l_i, acc, scale, softcap, SOFTCAP, USE_DOT, FP32, KV_FP8)

    if KV_FP8:
        acc = acc * tl.load(v_scale_ptr).to(tl.float32)
    if SPLIT:
        part = (n * num_q_heads + heads) * num_splits + split
        tl.store(m_ptr + part, m_i, mask=g_ok)
        tl.store(l_ptr + part, l_i, mask=g_ok)
        tl.store(acc_ptr + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=q_mask)
        # The last split of this (sequence, KV head) to finish merges them all, where a second kernel did:
        # each program's partials are stored (barrier) before its arrival is released to the others.
        tl.debug_barrier()
        count = count_ptr + n * tl.num_programs(1) + kv_head
        if tl.atomic_add(count, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
            tl.store(count, 0)  # zero again for the next launch (or CUDA-graph replay)
            offs_s = tl.arange(0, BLOCK_S)
            for g in tl.static_range(GROUP):
                head = kv_head * GROUP + g
                parts = (n * num_q_heads + head) * num_splits + offs_s
                out_row = out_ptr + n * stride_on + head * stride_oh
                _merge_splits(m_ptr, l_ptr, acc_ptr, out_row, parts, offs_s < num_splits, offs_d, d_ok, HEAD_DIM)
    else:
        o = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]  # an empty sequence gives zeros
        o_ptrs = out_ptr + n * stride_on + heads[:, None] * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, o.to(out_ptr.dtype.element_ty), mask=q_mask)


@triton.jit
def _load_tile(k_head, v_head, block, pos, p_ok, offs_d, d_ok, stride_kb, stride_ks, stride_vb, stride_vs,
               PAGE: tl.constexpr):  # fmt: skip
    """The K and V rows of positions `pos` ([BLOCK_N], those past p_ok zero) from their blocks' ids `block`."""
    kv_mask = p_ok[:, None] & d_ok[None, :]
    in_page, block = pos % PAGE, block.to(tl.int64)
    k = tl.load((k_head + block * stride_kb + in_page * stride_ks)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load((v_head + block * stride_vb + in_page * stride_vs)[:, None] + offs_d[None, :], mask=kv_mask, other=0.0)
    return k, v


@triton.jit
def _attend_tile(q, k, v, p_ok, m_i, l_i, acc, scale, softcap, SOFTCAP: tl.constexpr, USE_DOT: tl.constexpr,
                 FP32: tl.constexpr, KV_FP8: tl.constexpr):  # fmt: skip
    """One tile of online softmax: the running max m_i, sum l_i and unnormalized output acc after K/V rows
    `k` / `v` (those past p_ok masked out)."""
    if KV_FP8:  # the codes as they are: exact in fp16 or q's dtype (tensor cores), or fp32 (CUDA cores)
        k = k.to(q.dtype if USE_DOT else tl.float32)
        v = v.to(q.dtype if USE_DOT else tl.float32)
    if USE_DOT:  # tensor cores, query heads padded to 16 rows
        if FP32:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
    else:  # one or two query heads: broadcast-multiply-reduce in fp32
        s = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), axis=2)
    s = s * scale
    if SOFTCAP:
        s = softcap * tanh(s / softcap)
    s = tl.where(p_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2((m_i - m_new) * 1.4426950408889634)
    p = tl.exp2((s - m_new[:, None]) * 1.4426950408889634)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if USE_DOT:
        if FP32:
            pv = tl.dot(p, v, input_precision="ieee")
        else:
            pv = tl.dot(p.to(v.dtype), v)
    else:
        pv = tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _merge_splits(m_ptr, l_ptr, acc_ptr, out_row_ptr, parts, s_ok, offs_d, d_ok, HEAD_DIM: tl.constexpr):
    """One head's output from its splits' partials (m, l, unnormalized acc at `parts`), written at out_row_ptr.
    The partials come from other programs: loaded through L2 (.cg), never from a stale line of this SM's L1."""
    m = tl.load(m_ptr + parts, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
    l_part = tl.load(l_ptr + parts, mask=s_ok, other=0.0, cache_modifier=".cg")
    m_max = tl.max(m, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)  # every split empty
    w = tl.exp2((m - m_max) * 1.4426950408889634)
    total = tl.sum(l_part * w, axis=0)
    acc_mask = s_ok[:, None] & d_ok[None, :]
    acc = tl.load(acc_ptr + parts[:, None] * HEAD_DIM + offs_d[None, :], mask=acc_mask, other=0.0, cache_modifier=".cg")
    o = tl.sum(acc * w[:, None], axis=0) / tl.where(total > 0, total, 1.0)
    tl.store(out_row_ptr + offs_d, o.to(out_row_ptr.dtype.element_ty), mask=d_ok)


INTERPRETED: bool = is_interpreted(_paged_decode_kernel)


@functools.lru_cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


_ARRIVAL_COUNTS: dict[torch.device, list[Tensor]] = {}


def _arrival_counts(device: torch.device, size: int) -> Tensor:
    """At least `size` int32 counters, zero between launches, in which the splits of each (sequence, KV head)
    count their arrivals; the last to arrive merges and zeroes its counter again. One buffer serves every launch
    on a device; a larger one is added when needed, and none is freed, because captured CUDA graphs keep using
    the address they were captured with."""
    buffers = _ARRIVAL_COUNTS.setdefault(device, [])
    if not buffers or buffers[-1].numel() < size:
        buffers.append(torch.zeros(max(size, 4096), dtype=torch.int32, device=device))
    return buffers[-1]


def plan_splits(programs: int, max_context: int, device: torch.device) -> int:
    """Splits per sequence: one when sequences x KV heads fill two waves of the GPU, else enough for four
    (at most one per _MIN_PARTITION tokens of the longest context)."""
    sms = _num_sms(device)
    if programs >= 2 * sms:
        return 1
    return max(1, min(triton.cdiv(4 * sms, programs), max_context // _MIN_PARTITION))


def plan_key(q: Tensor, k_cache: Tensor, splits: int, softcap: float, sliding_window: int) -> tuple:
    """The tuning key of a decode-attention call: sequences (next power of two), heads, page, dtypes, splits."""
    _, page, hkv, head_dim = k_cache.shape
    n_bucket, hq = triton.next_power_of_2(q.shape[0]), q.shape[1]
    kinds = (q.dtype, k_cache.dtype, splits, softcap > 0, sliding_window > 0)
    return ("paged_decode", n_bucket, hq, hkv, head_dim, page, *kinds, q.device)


def _tuning_sample(n_seq: int, max_context: int, page: int, num_blocks: int, device) -> tuple[Tensor, Tensor]:
    """Block tables and lengths of `n_seq` sequences of TUNE_CONTEXT tokens (at most `max_context`), each on its
    own consecutive blocks as the block manager hands them out (wrapping when the cache has fewer)."""
    context = min(TUNE_CONTEXT, max_context)
    width = triton.cdiv(context, page)
    tables = (torch.arange(n_seq * width, device=device) % num_blocks).to(torch.int32).view(n_seq, width)
    return tables, torch.full((n_seq,), context, dtype=torch.int32, device=device)


def paged_decode_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    scale: float,
    softcap: float = 0.0,
    sliding_window: int = -1,
    out: Tensor | None = None,
    num_splits: int | None = None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    step_kv: StepKV | None = None,
) -> Tensor:
    """One decode step: q [N, Hq, D] attends to the first seq_lens[n] cached positions of sequence n.

    k_cache/v_cache: [num_blocks, PAGE, Hkv, D]; block_tables: [N, max_blocks] int32; seq_lens: [N] int32,
    each <= max_blocks * PAGE. `num_splits` forces the split-K partitions per sequence; None picks them from
    the GPU's SM count. `k_scale` / `v_scale` ([] float32): the caches are float8_e4m3fn, dequantized on load.
    `step_kv`: the tokens' own K/V (position seq_lens[n] - 1), written into the cache first (see StepKV).
    CPU tensors run the PyTorch reference unless Triton's interpreter is on.
    """
    if q.device.type == "cpu" and not INTERPRETED:
        return paged_decode_attention_reference(
            q, k_cache, v_cache, block_tables, seq_lens, scale, softcap, sliding_window, out, k_scale, v_scale, step_kv
        )
    n_seq, hq, head_dim = q.shape
    _, page, hkv, _ = k_cache.shape
    if hq % hkv or k_cache.shape[-1] != head_dim or v_cache.shape != k_cache.shape:
        raise ValueError(
            f"q {tuple(q.shape)} / k_cache {tuple(k_cache.shape)} / v_cache {tuple(v_cache.shape)}: need "
            "Hq a multiple of Hkv and equal head dims (caches are [num_blocks, block_size, Hkv, D])"
        )
    fp8 = k_scale is not None
    if fp8 != (v_scale is not None):
        raise ValueError("an FP8 cache needs both k_scale and v_scale")
    cache_dtype = torch.float8_e4m3fn if fp8 else q.dtype
    if page & (page - 1) or k_cache.dtype != cache_dtype or v_cache.dtype != cache_dtype:
        raise ValueError(
            f"block size {page} must be a power of two and the caches {cache_dtype} (q's dtype, or "
            f"float8_e4m3fn with k_scale / v_scale), not {k_cache.dtype} / {v_cache.dtype}"
        )
    if fp8 and q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 9):
        raise ValueError("an FP8 KV cache needs a GPU of compute capability 8.9 or newer; use kv_cache=None")
    out = torch.empty((n_seq, hq, head_dim), dtype=q.dtype, device=q.device) if out is None else out
    if any(t.stride(-1) != 1 for t in (q, k_cache, v_cache, out)):
        raise ValueError("q, k_cache, v_cache and out need a contiguous last (head) dim")
    block_tables, seq_lens = block_tables.contiguous(), seq_lens.contiguous()
    if step_kv is not None:
        step_kv.check(q, k_cache)
    if n_seq == 0:
        return out
    # Fixed plans: splits from the sequences alone, so a rank with half the heads splits each head alike.
    programs = n_seq if plans_fixed() else n_seq * hkv
    max_context = block_tables.shape[1] * page
    splits = num_splits or plan_splits(programs, max_context, q.device)
    min_partition = 1 if num_splits else _MIN_PARTITION  # forced splits split any context (tests)
    group = hq // hkv
    plans = PLANS if group <= 2 else list(dict.fromkeys(plan._replace(tensor_cores=True) for plan in PLANS))
    block_d = triton.next_power_of_2(head_dim)
    f32 = dict(dtype=torch.float32, device=q.device)
    m = torch.empty((n_seq, hq, splits), **f32) if splits > 1 else out
    lse = torch.empty((n_seq, hq, splits), **f32) if splits > 1 else out
    acc = torch.empty((n_seq, hq, splits, head_dim), **f32) if splits > 1 else out
    arrivals = _arrival_counts(q.device, n_seq * hkv) if splits > 1 else seq_lens  # unread without SPLIT
    if fp8:  # a no-op for the graph's constants, which live on the device (the kernel reads them as fp32)
        k_scale, v_scale = k_scale.to(q.device), v_scale.to(q.device)
    meta = dict(
        GROUP=group, HEAD_DIM=head_dim, PAGE=page, SPLIT=splits > 1, SOFTCAP=softcap > 0,
        WINDOW=sliding_window > 0, FP32=q.dtype == torch.float32, KV_FP8=fp8,
        MIN_PARTITION=min_partition, BLOCK_D=block_d, BLOCK_S=triton.next_power_of_2(splits),
        **pdl.launch_args(q.device),
    )  # fmt: skip
    # Unread where the constexprs say so: the scales without KV_FP8, the step's K/V and rotary without NEW_KV.
    step = step_kv or StepKV(q, q, seq_lens)
    cos, sin = (step.cos, step.sin) if step.cos is not None else (q, q)
    unrotated = dict(ROTARY_HALF=0, INTERLEAVED=False, ROTARY_DTYPE=tl_dtype(q.dtype))
    step_meta = dict(NEW_KV=step_kv is not None, **unrotated)
    if step.cos is not None:
        compute = torch.promote_types(torch.promote_types(q.dtype, cos.dtype), sin.dtype)
        step_meta.update(ROTARY_HALF=cos.shape[-1] // 2, INTERLEAVED=step.interleaved, ROTARY_DTYPE=tl_dtype(compute))

    def launch(plan: DecodePlan, tables: Tensor, lens: Tensor, step_meta: dict) -> None:
        block_g = max(16, triton.next_power_of_2(group)) if plan.tensor_cores else triton.next_power_of_2(group)
        _paged_decode_kernel[(n_seq, hkv, splits)](
            q, k_cache, v_cache, tables, lens, out, m, lse, acc, arrivals,
            k_scale if fp8 else k_cache, v_scale if fp8 else v_cache,
            step.k, step.v, step.slot_mapping, cos, sin,
            q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
            tables.stride(0), out.stride(0), out.stride(1),
            step.k.stride(0), step.k.stride(1), step.v.stride(0), step.v.stride(1), cos.stride(0), sin.stride(0),
            hq, splits, float(scale), float(softcap), int(sliding_window),
            USE_DOT=plan.tensor_cores, BLOCK_G=block_g, BLOCK_N=plan.block_n, num_warps=plan.num_warps,
            num_stages=plan.num_stages, enable_fp_fusion=not step_meta["ROTARY_HALF"], **step_meta, **meta,
        )  # fmt: skip

    # Plans are timed on a sample without the step's write (it would write into the cache's blocks).
    sample = functools.cache(lambda: _tuning_sample(n_seq, max_context, page, k_cache.shape[0], q.device))
    key = plan_key(q, k_cache, splits, softcap, sliding_window)
    plan = cached_plan(key, plans, lambda plan: launch(plan, *sample(), dict(NEW_KV=False, **unrotated)))
    launch(plan, block_tables, seq_lens, step_meta)
    return out


def paged_decode_attention_reference(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    block_tables: Tensor,
    seq_lens: Tensor,
    scale: float,
    softcap: float = 0.0,
    sliding_window: int = -1,
    out: Tensor | None = None,
    k_scale: Tensor | None = None,
    v_scale: Tensor | None = None,
    step_kv: StepKV | None = None,
) -> Tensor:
    """Write the step's K/V (rotated), then gather each sequence's K/V from its blocks and run plain fp32 softmax
    attention (same signature; an FP8 cache is dequantized into q's dtype first, as the kernel does)."""
    n_seq, hq, head_dim = q.shape
    page, hkv = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q) if out is None else out
    if step_kv is not None:
        k_new = step_kv.k
        if step_kv.cos is not None:
            cos, sin = step_kv.cos[:, None], step_kv.sin[:, None]  # [N, 1, R]: one row per token, every head
            q, k_new = (rope_reference(x, cos, sin, step_kv.interleaved) for x in (q, k_new))
        write_rows(k_cache, k_new, step_kv.slot_mapping, k_scale)
        write_rows(v_cache, step_kv.v, step_kv.slot_mapping, v_scale)
    for i, length in enumerate(seq_lens.tolist()):
        first = max(0, length - sliding_window) if sliding_window > 0 else 0
        blocks = block_tables[i, : -(-length // page)].long()
        k = load_kv(k_cache[blocks].reshape(-1, hkv, head_dim)[first:length], k_scale, q.dtype).float()
        v = load_kv(v_cache[blocks].reshape(-1, hkv, head_dim)[first:length], v_scale, q.dtype).float()
        k, v = k.repeat_interleave(hq // hkv, dim=1), v.repeat_interleave(hq // hkv, dim=1)  # [L, Hq, D]
        scores = torch.einsum("hd,lhd->hl", q[i].float(), k) * scale
        if softcap > 0:
            scores = torch.tanh(scores / softcap) * softcap
        out[i] = torch.einsum("hl,lhd->hd", torch.softmax(scores, dim=-1), v).to(out.dtype)
    return out
