"""FP8 KV cache in the CUDA path of paged attention, under Triton's interpreter: the decode kernel dequantizes
float8_e4m3fn K/V tiles with k_scale / v_scale as the reference does, and cached_attention.paged_attention (the
op's CUDA kernel: FP8 write, Triton decode, SDPA prefill) computes what the reference op does.

These run the kernels in Triton's CPU interpreter only; on a GPU, the `gpu` tests below run them compiled."""

from __future__ import annotations

import pytest
import torch
from test_paged_attention_kernels import HEADS, _paged_case

from trtllm_compile.ops.paged_attention import FP8_KV_DTYPE, load_kv, store_kv

# Clamping is part of the contract: with these scales the K/V tails beyond +-1.75 (K) / +-3.5 (V) saturate at 448.
# Powers of two: K/V made of FP8 codes times the scale quantize back to those codes exactly, which the
# interpreter tests need (Triton's interpreter mis-rounds fp32 -> E4M3 casts that carry into the exponent).
K_SCALE, V_SCALE = torch.tensor(2.0**-8), torch.tensor(2.0**-7)


def _fp8_case(seq_lens, q_heads, kv_heads, head_dim, page, dtype, device):
    (q, k_cache, v_cache, tables, lens), scale = _paged_case(seq_lens, q_heads, kv_heads, head_dim, page, dtype, device)
    k_scale, v_scale = K_SCALE.to(device), V_SCALE.to(device)
    k_fp8, v_fp8 = store_kv(k_cache, k_scale, FP8_KV_DTYPE), store_kv(v_cache, v_scale, FP8_KV_DTYPE)
    return (q, k_fp8, v_fp8, tables, lens), (k_scale, v_scale), scale


def test_fp8_reference_reads_what_fp8_qdq_returns():
    """The decode reference on an FP8 cache == on the float cache of fp8_qdq'd values (the simulated cache)."""
    from trtllm_compile.kernels import paged_attention as attn

    (q, k_fp8, v_fp8, tables, lens), scales, scale = _fp8_case([13, 0, 1, 16, 30], 8, 2, 16, 8, torch.bfloat16, "cpu")
    simulated = [load_kv(c, s, q.dtype) for c, s in zip((k_fp8, v_fp8), scales, strict=True)]
    expected = attn.paged_decode_attention_reference(q, *simulated, tables, lens, scale)
    actual = attn.paged_decode_attention_reference(
        q, k_fp8, v_fp8, tables, lens, scale, k_scale=scales[0], v_scale=scales[1]
    )
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("splits", [None, 3], ids=["one-pass", "split-k"])
@pytest.mark.parametrize("q_heads,kv_heads", HEADS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tensor_cores", [False, True], ids=["default-plan", "tensor-cores"])
def test_paged_decode_fp8_interpreted(
    interpreted, assert_matches, monkeypatch, dtype, q_heads, kv_heads, splits, tensor_cores
):
    """On the tensor cores the codes meet q in fp16 (bf16 q included), so the interpreter runs every dtype."""
    attn = interpreted("paged_attention")
    if tensor_cores:  # the untuned default; MHA then takes the tensor cores too
        monkeypatch.setattr(attn, "PLANS", [attn.DecodePlan(32, 2, 2, tensor_cores=True)])
    args, (k_scale, v_scale), scale = _fp8_case([13, 0, 1, 16, 30], q_heads, kv_heads, 16, 8, dtype, "cpu")
    expected = attn.paged_decode_attention_reference(*args, scale, k_scale=k_scale, v_scale=v_scale)
    actual = attn.paged_decode_attention(*args, scale, num_splits=splits, k_scale=k_scale, v_scale=v_scale)
    assert_matches(actual, expected, "attention")
    assert actual[1].abs().max() == 0  # seq_len 0 attends to nothing


def test_paged_decode_fp8_on_tensor_cores_takes_q_beyond_fp16s_range(interpreted, assert_matches, monkeypatch):
    """On the tensor cores an FP8 cache meets q in fp16; q values past 65504 (bf16 holds them) are scaled by the
    softmax scale before they are rounded to fp16, rather than becoming inf."""
    attn = interpreted("paged_attention")
    monkeypatch.setattr(attn, "PLANS", [attn.DecodePlan(32, 2, 2, tensor_cores=True)])
    (q, *cache), (k_scale, v_scale), scale = _fp8_case([13, 1, 30], 8, 2, 16, 8, torch.bfloat16, "cpu")
    q = q * 2.0**15  # exact in bf16; the largest values pass 65504
    assert q.abs().max() > torch.finfo(torch.float16).max
    expected = attn.paged_decode_attention_reference(q, *cache, scale, k_scale=k_scale, v_scale=v_scale)
    actual = attn.paged_decode_attention(q, *cache, scale, k_scale=k_scale, v_scale=v_scale)
    assert actual.isfinite().all()
    assert_matches(actual, expected, "attention")


def test_paged_decode_fp8_rejects_a_cache_without_scales(interpreted):
    attn = interpreted("paged_attention")
    args, _, scale = _fp8_case([5], 4, 4, 16, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match="float8_e4m3fn with k_scale"):
        attn.paged_decode_attention(*args, scale)


def _step(kv_heads, q_heads, head_dim, lengths, dtype, device, seed, scales):
    """q, and K/V of FP8 codes times their scale (one saturating value each): their E4M3 quantization is exact."""
    gen = torch.Generator().manual_seed(seed)
    tokens = sum(lengths)
    q = torch.randn(1, q_heads, tokens, head_dim, generator=gen).to(device, dtype)
    k, v = (torch.randn(1, kv_heads, tokens, head_dim, generator=gen) for _ in range(2))
    k_scale, v_scale = (s.cpu() for s in scales)
    k, v = (store_kv(x, s, FP8_KV_DTYPE).float() * s for x, s in ((k, k_scale), (v, v_scale)))
    k[..., 0, 3], v[..., 0, 5] = 3 * 448 * k_scale, -3 * 448 * v_scale
    return q, k.to(device, dtype), v.to(device, dtype)


def _run_steps(op, kv_cache, steps, tables, scales, device, dtype, window=-1):
    """Feed `steps` ([(seq, start_pos, num_tokens)] each, decodes first) through `op`; the outputs, per step."""
    layers, _, _, page, kv_heads, head_dim = kv_cache.shape
    outputs = []
    for seed, step in enumerate(steps):
        lengths = [n for _, _, n in step]
        q, k, v = _step(kv_heads, 2 * kv_heads, head_dim, lengths, dtype, device, seed, scales)
        slots = [
            int(tables[seq, pos // page]) * page + pos % page
            for seq, start, n in step
            for pos in range(start, start + n)
        ]
        starts = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
        metadata = (
            torch.tensor(slots, device=device),
            tables[[seq for seq, _, _ in step]].to(device),
            torch.tensor([start + n for _, start, n in step], dtype=torch.int32, device=device),
            starts,
        )
        outputs.append(op(q, k, v, kv_cache, *metadata, layers - 1, head_dim**-0.5, window, 0.0, *scales))
    return outputs


# Three prompts prefilled (a prefill row starts at position 0, as the runner guarantees), then two decode steps,
# then a fourth prompt joins behind three decodes: pages of 4, so sequences cross page boundaries.
STEPS = [
    [(0, 0, 5), (1, 0, 9), (2, 0, 3)],
    [(0, 5, 1), (1, 9, 1), (2, 3, 1)],
    [(0, 6, 1), (1, 10, 1), (2, 4, 1)],
    [(0, 7, 1), (1, 11, 1), (2, 5, 1), (3, 0, 6)],
]


@pytest.mark.parametrize("window", [-1, 4], ids=["full", "window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_cached_attention_fp8_interpreted(interpreted, assert_matches, dtype, window):
    """The op's CUDA implementation (FP8 cache write, Triton decode, SDPA prefills) against the reference op."""
    interpreted("paged_attention")
    from trtllm_compile.kernels import cached_attention

    tables = torch.randperm(24, generator=torch.Generator().manual_seed(1))[:20].view(4, 5).to(torch.int32)
    caches = [torch.zeros(2, 2, 25, 4, 2, 16, dtype=FP8_KV_DTYPE) for _ in range(2)]
    scales = (K_SCALE, V_SCALE)
    actual = _run_steps(cached_attention.paged_attention, caches[0], STEPS, tables, scales, "cpu", dtype, window)
    expected = _run_steps(torch.ops.trtllm.paged_attention, caches[1], STEPS, tables, scales, "cpu", dtype, window)
    assert torch.equal(caches[0].view(torch.uint8), caches[1].view(torch.uint8))  # the same bytes written
    for got, want in zip(actual, expected, strict=True):
        assert_matches(got, want, "attention")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("q_heads,kv_heads,head_dim,page", [(32, 8, 128, 32), (8, 1, 64, 64)], ids=str)
def test_paged_decode_fp8_gpu(assert_matches, dtype, q_heads, kv_heads, head_dim, page):
    from trtllm_compile.kernels import paged_attention as attn

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 KV cache loads need compute capability 8.9 or newer")
    lens = torch.randint(1, 1500, (5,), generator=torch.Generator().manual_seed(0)).tolist()
    args, (k_scale, v_scale), scale = _fp8_case(lens, q_heads, kv_heads, head_dim, page, dtype, "cuda")
    expected = attn.paged_decode_attention_reference(*args, scale, k_scale=k_scale, v_scale=v_scale)
    assert_matches(attn.paged_decode_attention(*args, scale, k_scale=k_scale, v_scale=v_scale), expected, "attention")


@pytest.mark.gpu
def test_paged_decode_fp8_gpu_on_tensor_cores_takes_q_beyond_fp16s_range(assert_matches, monkeypatch):
    from trtllm_compile.kernels import paged_attention as attn

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 KV cache loads need compute capability 8.9 or newer")
    from trtllm_compile.kernels import tuning

    monkeypatch.setattr(attn, "PLANS", [attn.DecodePlan(32, 4, 2, tensor_cores=True)])
    monkeypatch.setattr(tuning, "plans", {})  # no plan cached by another test for this shape
    (q, *cache), (k_scale, v_scale), scale = _fp8_case([700, 3, 1200], 32, 32, 128, 16, torch.bfloat16, "cuda")
    q = q * 2.0**15  # Llama-2 heads (MHA); the largest values pass 65504
    expected = attn.paged_decode_attention_reference(q, *cache, scale, k_scale=k_scale, v_scale=v_scale)
    actual = attn.paged_decode_attention(q, *cache, scale, k_scale=k_scale, v_scale=v_scale)
    assert actual.isfinite().all()
    assert_matches(actual, expected, "attention")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cached_attention_fp8_gpu(cuda_ops, reference, assert_matches, dtype):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 KV cache loads need compute capability 8.9 or newer")
    tables = torch.randperm(24, generator=torch.Generator().manual_seed(1))[:20].view(4, 5).to(torch.int32)
    caches = [torch.zeros(2, 2, 25, 4, 2, 16, dtype=FP8_KV_DTYPE, device=d) for d in ("cuda", "cpu")]
    actual = _run_steps(
        cuda_ops.paged_attention, caches[0], STEPS, tables.cuda(), (K_SCALE.cuda(), V_SCALE.cuda()), "cuda", dtype
    )
    expected = _run_steps(torch.ops.trtllm.paged_attention, caches[1], STEPS, tables, (K_SCALE, V_SCALE), "cpu", dtype)
    assert torch.equal(caches[0].cpu().view(torch.uint8), caches[1].view(torch.uint8))
    for got, want in zip(actual, expected, strict=True):
        assert_matches(got, want.cuda(), "attention")
