"""trtllm.paged_attention's PyTorch body: a decode sees what the same token saw as the last of a prefill, and an
FP8 KV cache (k_scale / v_scale) against the simulated one it replaces: fp8_qdq(K), fp8_qdq(V) written to a
cache in the model dtype. Both round K/V identically (same quantize, same dequantize in the same order), so
every step's output and every cached value must be bit-for-bit equal."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.ops.paged_attention import FP8_KV_DTYPE, load_kv

ops = torch.ops.trtllm
LAYERS, KV_HEADS, Q_HEADS, HEAD_DIM, PAGE, NUM_BLOCKS = 2, 2, 4, 16, 4, 24
# Scales that make K/V beyond +-2 / +-2.5 saturate, so clamping to E4M3's +-448 is exercised too.
K_SCALE, V_SCALE = torch.tensor(2.0 / 448), torch.tensor(2.5 / 448)

# Steps of (sequence, start position, tokens): prefills of three prompts, decodes, a chunked prefill continuing
# sequence 1 beside decodes, and a fourth prompt joining. Pages of 4 tokens, so sequences cross page boundaries.
STEPS = [
    [(0, 0, 5), (1, 0, 9), (2, 0, 3)],
    [(0, 5, 1), (2, 3, 1), (1, 9, 4)],
    [(0, 6, 1), (1, 13, 1), (2, 4, 1)],
    [(0, 7, 1), (1, 14, 1), (2, 5, 1), (3, 0, 6)],
]


def _run(kv_cache, dtype, window, kv: str) -> list[torch.Tensor]:
    """Run STEPS on `kv_cache` at its last layer. `kv`: "fp8" passes the scales (an FP8 cache), "qdq" writes
    fp8_qdq'd K/V (the simulated FP8 cache), "raw" writes K/V as they are."""
    tables = torch.randperm(NUM_BLOCKS, generator=torch.Generator().manual_seed(1))[:20].view(4, 5).to(torch.int32)
    outputs = []
    for seed, step in enumerate(STEPS):
        gen = torch.Generator().manual_seed(seed)
        lengths = [n for _, _, n in step]
        q = torch.randn(1, Q_HEADS, sum(lengths), HEAD_DIM, generator=gen).to(dtype)
        k, v = (torch.randn(1, KV_HEADS, sum(lengths), HEAD_DIM, generator=gen).to(dtype) for _ in range(2))
        slots = [int(tables[s, p // PAGE]) * PAGE + p % PAGE for s, start, n in step for p in range(start, start + n)]
        metadata = (
            torch.tensor(slots),
            tables[[s for s, _, _ in step]],
            torch.tensor([start + n for _, start, n in step], dtype=torch.int32),
            torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32),
        )
        if kv == "qdq":
            k, v = ops.fp8_qdq(k, K_SCALE), ops.fp8_qdq(v, V_SCALE)
        scales = (K_SCALE, V_SCALE) if kv == "fp8" else ()
        outputs.append(
            ops.paged_attention(q, k, v, kv_cache, *metadata, LAYERS - 1, HEAD_DIM**-0.5, window, 0.0, *scales)
        )
    return outputs


def _cache(dtype):
    return torch.zeros(LAYERS, 2, NUM_BLOCKS, PAGE, KV_HEADS, HEAD_DIM, dtype=dtype)


@pytest.mark.parametrize("window", [-1, 3, 7], ids=["full", "window", "window-of-all"])
@pytest.mark.parametrize("softcap", [0.0, 5.0], ids=["no-softcap", "softcap"])
def test_decode_sees_what_the_last_token_of_a_prefill_sees(window, softcap):
    """A decode attends without a mask (to the window's last keys, sliced); the prefill's last row is masked."""
    tokens = 7
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, Q_HEADS, tokens, HEAD_DIM, generator=gen)
    k, v = (torch.randn(1, KV_HEADS, tokens, HEAD_DIM, generator=gen) for _ in range(2))
    table = torch.tensor([[3, 0, 5]], dtype=torch.int32)
    slots = torch.tensor([int(table[0, p // PAGE]) * PAGE + p % PAGE for p in range(tokens)])

    def attend(cache, first: int, last: int):
        """Tokens first..last-1 of the sequence, as one step."""
        rows, length = slice(first, last), torch.tensor([last], dtype=torch.int32)
        return ops.paged_attention(
            q[:, :, rows], k[:, :, rows], v[:, :, rows], cache, slots[rows], table, length,
            torch.tensor([0, last - first], dtype=torch.int32), 0, HEAD_DIM**-0.5, window, softcap,
        )  # fmt: skip

    prefill = attend(_cache(torch.float32), 0, tokens)
    cache = _cache(torch.float32)
    attend(cache, 0, tokens - 1)
    decode = attend(cache, tokens - 1, tokens)
    torch.testing.assert_close(decode, prefill[:, :, -1:])


@pytest.mark.parametrize("window", [-1, 3], ids=["full", "window"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fp8_cache_equals_the_simulated_qdq_exactly(dtype, window):
    fp8_cache, simulated_cache = _cache(FP8_KV_DTYPE), _cache(dtype)
    actual = _run(fp8_cache, dtype, window, "fp8")
    expected = _run(simulated_cache, dtype, window, "qdq")
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == dtype and torch.equal(got, want)
    for which, scale in enumerate((K_SCALE, V_SCALE)):  # every cached value reads back as fp8_qdq returned it
        assert torch.equal(load_kv(fp8_cache[:, which], scale, dtype), simulated_cache[:, which])
    assert fp8_cache[0].float().abs().max() == 0  # layer 0 untouched
    assert fp8_cache.float().abs().max() == 448  # some K/V saturated


def test_fp8_cache_rounds_keys_and_values():
    """Not a no-op: the FP8 result differs from a full-precision cache fed the raw K/V."""
    actual = _run(_cache(FP8_KV_DTYPE), torch.float32, -1, "fp8")
    unrounded = _run(_cache(torch.float32), torch.float32, -1, "raw")
    for got, want in zip(actual, unrounded, strict=True):
        assert not torch.equal(got, want)


def test_fp8_cache_needs_scales():
    q = k = v = torch.zeros(1, KV_HEADS, 1, HEAD_DIM)
    metadata = (torch.tensor([0]), torch.zeros(1, 1, dtype=torch.int32), torch.tensor([1], dtype=torch.int32))
    starts = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ValueError, match="k_scale / v_scale"):
        ops.paged_attention(q, k, v, _cache(FP8_KV_DTYPE), *metadata, starts, 0, 0.25)
    with pytest.raises(ValueError, match="both k_scale and v_scale"):
        ops.paged_attention(q, k, v, _cache(FP8_KV_DTYPE), *metadata, starts, 0, 0.25, -1, 0.0, K_SCALE, None)


@pytest.mark.parametrize("cache_dtype", [FP8_KV_DTYPE, torch.float32], ids=str)
def test_opcheck_with_scales(opcheck, cache_dtype):
    """The schema (kv_cache mutated, optional scales) and the fake kernel. torch's schema check compares tensors
    with allclose, which has no float8 kernel on CPU, so it runs on a float32 cache holding the FP8 codes."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, Q_HEADS, 3, HEAD_DIM, generator=gen)
    k, v = (torch.randn(1, KV_HEADS, 3, HEAD_DIM, generator=gen) for _ in range(2))
    metadata = (
        torch.tensor([0, 1, 2]),
        torch.zeros(1, 1, dtype=torch.int32),
        torch.tensor([3], dtype=torch.int32),
        torch.tensor([0, 3], dtype=torch.int32),
    )
    args = (q, k, v, _cache(cache_dtype), *metadata, 0, 0.25, -1, 0.0, K_SCALE, V_SCALE)
    if cache_dtype == FP8_KV_DTYPE:
        torch.library.opcheck(ops.paged_attention.default, args, test_utils=("test_faketensor",))
    else:
        opcheck(ops.paged_attention.default, args)
