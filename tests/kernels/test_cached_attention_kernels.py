"""`trtllm::paged_attention` on CUDA (kernels/cached_attention.py) against its PyTorch reference on a step that
mixes decodes with several prefills: the decode kernel and the one flash varlen call for all prefills (half
precision), or SDPA per prefill (fp32, soft-cap), with GQA and sliding windows. Caches must come out equal.
With RoPE folded in (cos / sin), a step of decodes only is the decode kernel alone, rotating and writing K/V."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

HQ, HKV, D, PAGE = 8, 2, 64, 16
DECODE_CONTEXTS = [40, 17]  # tokens already cached; each decode adds one
PREFILLS = [5, 33, 70]


def _step(dtype, prefills=PREFILLS):
    gen = torch.Generator().manual_seed(0)
    lengths = [1] * len(DECODE_CONTEXTS) + prefills
    total = sum(lengths)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    contexts = [c + 1 for c in DECODE_CONTEXTS] + prefills
    blocks_per_seq = [-(-c // PAGE) for c in contexts]
    num_blocks = sum(blocks_per_seq) + 3
    order = torch.randperm(num_blocks, generator=gen).tolist()
    tables = torch.full((len(lengths), max(blocks_per_seq)), num_blocks, dtype=torch.int32)
    slots = []
    for row, (n, context, used) in enumerate(zip(lengths, contexts, blocks_per_seq, strict=True)):
        tables[row, :used] = torch.tensor(order[:used], dtype=torch.int32)
        order = order[used:]
        for pos in range(context - n, context):
            slots.append(int(tables[row, pos // PAGE]) * PAGE + pos % PAGE)
    cache = torch.randn(1, 2, num_blocks + 1, PAGE, HKV, D, generator=gen).to(dtype)  # decodes' context: random
    q = torch.randn(1, HQ, total, D, generator=gen).to(dtype)
    k = torch.randn(1, HKV, total, D, generator=gen).to(dtype)
    v = torch.randn(1, HKV, total, D, generator=gen).to(dtype)
    return [
        q,
        k,
        v,
        cache,
        torch.tensor(slots),
        tables,
        torch.tensor(contexts, dtype=torch.int32),
        torch.tensor(starts),
    ]


@pytest.mark.parametrize(
    "dtype, window, softcap",
    [
        (torch.bfloat16, -1, 0.0),  # the varlen call
        (torch.float16, 24, 0.0),  # varlen with a window shorter than two prefills
        (torch.bfloat16, -1, 30.0),  # soft-cap: SDPA per prefill
        (torch.float32, -1, 0.0),  # fp32: SDPA per prefill
    ],
    ids=["bf16", "fp16-window", "bf16-softcap", "fp32"],
)
def test_cached_attention_on_a_mixed_step_matches_the_reference(cuda_ops, assert_matches, dtype, window, softcap):
    args = _step(dtype)
    on_gpu = [a.cuda() if i != 7 else a for i, a in enumerate(args)]  # query_start_loc stays on the host
    expected_cache = args[3].clone()
    ref_args = [*args[:3], expected_cache, *args[4:]]
    expected = cuda_ops.paged_attention(*ref_args, 0, 0.125, window, softcap)  # CPU: the PyTorch reference
    actual = cuda_ops.paged_attention(*on_gpu, 0, 0.125, window, softcap)
    assert_matches(actual, expected.to(actual.device), "attention")
    assert torch.equal(on_gpu[3].cpu(), expected_cache)


@pytest.mark.parametrize("kv_cache", ["bf16", "fp8"])
@pytest.mark.parametrize("rotary", [D, 32], ids=["rotate-half", "interleaved-partial"])
@pytest.mark.parametrize("prefills", [PREFILLS, []], ids=["mixed", "decodes-only"])
def test_cached_attention_with_rope_folded_in(cuda_ops, assert_matches, prefills, rotary, kv_cache):
    from trtllm_compile.ops.paged_attention import FP8_KV_DTYPE, store_kv

    args = _step(torch.bfloat16, prefills)
    angles = torch.randn(1, 1, args[0].shape[2], rotary, generator=torch.Generator().manual_seed(2))
    kwargs = dict(cos=angles.cos().bfloat16(), sin=angles.sin().bfloat16(), interleaved=rotary < D)
    if kv_cache == "fp8":
        scales = torch.tensor(2.0**-4), torch.tensor(2.0**-3)
        args[3] = torch.stack([store_kv(args[3][:, i], s, FP8_KV_DTYPE) for i, s in enumerate(scales)], dim=1)
        kwargs.update(k_scale=scales[0], v_scale=scales[1])
    on_gpu = [a.cuda() if i != 7 else a for i, a in enumerate(args)]
    expected_cache = args[3].clone()
    expected = cuda_ops.paged_attention(*args[:3], expected_cache, *args[4:], 0, 0.125, -1, 0.0, **kwargs)
    actual = cuda_ops.paged_attention(*on_gpu, 0, 0.125, -1, 0.0, **{k: _cuda(v) for k, v in kwargs.items()})
    assert_matches(actual, expected.to(actual.device), "attention")
    assert torch.equal(on_gpu[3].cpu().view(torch.uint8), expected_cache.view(torch.uint8))


def _cuda(value):
    return value.cuda() if isinstance(value, torch.Tensor) else value
