"""Paged decode attention kernel against its gather-then-softmax reference (GQA, split-K, softcap, window)."""

from __future__ import annotations

import math

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _paged_case(seq_lens, q_heads, kv_heads, head_dim, page, dtype, device, spare_blocks=5):
    """Random caches with each sequence's blocks scattered over the pool, plus unused table entries."""
    gen = torch.Generator().manual_seed(0)
    max_blocks = max(-(-n // page) for n in seq_lens) + 1
    num_blocks = len(seq_lens) * max_blocks + spare_blocks
    q = torch.randn(len(seq_lens), q_heads, head_dim, generator=gen)
    k_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, page, kv_heads, head_dim, generator=gen)
    tables = torch.randperm(num_blocks, generator=gen)[: len(seq_lens) * max_blocks].view(len(seq_lens), -1)
    tensors = [t.to(device=device, dtype=dtype) for t in (q, k_cache, v_cache)]
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return (*tensors, tables.to(device=device, dtype=torch.int32), lens), 1.0 / math.sqrt(head_dim)


HEADS = [(4, 4), (8, 2), (4, 1)]  # MHA (vector path), GQA and MQA (tensor-core path)
VARIANTS = {"plain": {}, "softcap": {"softcap": 5.0}, "window": {"sliding_window": 7}}


# softcap and window masks do not depend on the dtype: every dtype runs "plain", fp32 runs all variants
INTERPRETED_CASES = [(d, v) for d in DTYPES for v in VARIANTS if v == "plain" or d == torch.float32]


@pytest.mark.parametrize("splits", [None, 3], ids=["one-pass", "split-k"])
@pytest.mark.parametrize("q_heads,kv_heads", HEADS, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype,variant", INTERPRETED_CASES, ids=str)
def test_paged_decode_interpreted(interpreted, assert_matches, dtype, variant, q_heads, kv_heads, splits):
    attn = interpreted("paged_attention")
    if dtype == torch.bfloat16 and q_heads // kv_heads > 2:
        pytest.skip("Triton's interpreter multiplies bf16 tl.dot operands as raw uint16 bits; the GPU tests cover it")
    # lengths: empty, one token, a page boundary, the window edge, and a multi-partition sequence
    args, scale = _paged_case([13, 0, 1, 16, 30], q_heads, kv_heads, 16, 8, dtype, "cpu")
    expected = attn.paged_decode_attention_reference(*args, scale, **VARIANTS[variant])
    actual = attn.paged_decode_attention(*args, scale, **VARIANTS[variant], num_splits=splits)
    assert_matches(actual, expected, "attention")
    assert actual[1].abs().max() == 0  # seq_len 0 attends to nothing
    assert all(not counts.any() for counts in attn._ARRIVAL_COUNTS.get(args[0].device, []))  # zero for the next


@pytest.mark.gpu
def test_paged_decode_gpu_merges_splits_in_the_last_program_across_cuda_graph_replays(assert_matches):
    """The splits' arrival counters are zero again after every launch, so a captured graph merges on each replay."""
    from trtllm_compile.kernels import paged_attention as attn

    args, scale = _paged_case([700, 3, 64, 250], 8, 2, 128, 16, torch.bfloat16, "cuda")
    out = attn.paged_decode_attention(*args, scale, num_splits=8)  # warm-up: compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        attn.paged_decode_attention(*args, scale, out=out, num_splits=8)
    q = args[0]
    for step in range(3):
        q.copy_(torch.randn(q.shape, generator=torch.Generator().manual_seed(step)).to(q))
        out.zero_()
        graph.replay()
        assert_matches(out, attn.paged_decode_attention_reference(*args, scale), "attention")
        assert not attn._ARRIVAL_COUNTS[q.device][-1].any()


@pytest.mark.parametrize("splits", [None, 3], ids=["one-pass", "split-k"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_paged_decode_interpreted_mha_on_tensor_cores(interpreted, assert_matches, monkeypatch, dtype, splits):
    """One query head a KV head, padded to 16 rows for the tensor cores when a plan says so (bf16: the GPU tests)."""
    attn = interpreted("paged_attention")
    monkeypatch.setattr(attn, "PLANS", [attn.DecodePlan(32, 2, 2, tensor_cores=True)])  # the untuned default
    args, scale = _paged_case([13, 0, 1, 16, 30], 4, 4, 16, 8, dtype, "cpu")
    expected = attn.paged_decode_attention_reference(*args, scale)
    assert_matches(attn.paged_decode_attention(*args, scale, num_splits=splits), expected, "attention")


def test_paged_decode_interpreted_strided_q_and_out(interpreted, assert_matches):
    attn = interpreted("paged_attention")
    (q, *rest), scale = _paged_case([9, 21], 8, 2, 32, 4, torch.float16, "cpu")
    qkv = torch.cat([q, torch.zeros_like(q), torch.zeros_like(q)], dim=1)  # q as a view of a fused qkv row
    out = torch.full((2, 8, 32), float("nan"), dtype=torch.float16)
    attn.paged_decode_attention(qkv[:, :8], *rest, scale, out=out, num_splits=3)
    assert_matches(out, attn.paged_decode_attention_reference(q, *rest, scale), "attention")


def step_kv_case(q, k_cache, tables, lens, rotary):
    """The decode rows' own K/V (position lens[n] - 1 of each sequence) with their slots, and cos / sin [N, R]
    rows when `rotary` is (R, interleaved)."""
    from trtllm_compile.kernels.paged_attention import StepKV

    gen = torch.Generator().manual_seed(1)
    page, kv_heads, head_dim = k_cache.shape[1:]
    positions = (lens - 1).long().cpu()
    slots = tables.long().cpu().gather(1, (positions // page)[:, None])[:, 0] * page + positions % page
    k, v = (torch.randn(len(lens), kv_heads, head_dim, generator=gen).to(q) for _ in range(2))
    if rotary is None:
        return StepKV(k, v, slots.to(q.device))
    width, interleaved = rotary
    angles = torch.randn(len(lens), width, generator=gen)
    return StepKV(k, v, slots.to(q.device), angles.cos().to(q), angles.sin().to(q), interleaved)


ROTARY = {"no-rope": None, "rotate-half": (16, False), "interleaved-partial": (8, True)}


@pytest.mark.parametrize("rotary", ROTARY.values(), ids=ROTARY.keys())
@pytest.mark.parametrize("splits", [None, 3], ids=["one-pass", "split-k"])
@pytest.mark.parametrize("q_heads,kv_heads", [(4, 4), (8, 2)], ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_paged_decode_interpreted_writes_and_rotates_the_step(
    interpreted, assert_matches, dtype, q_heads, kv_heads, splits, rotary
):
    """The kernel stores the step's (rotated) K/V in the cache, bit for bit as the reference does, and attends
    with them and the rotated q. Tokens land mid-page, at a page's end and the start of the next; the step's row
    in the first tile a program reads (loaded before the row is written, then replaced in registers) and, at 70
    tokens in one pass, in a later tile (read back from the cache)."""
    attn = interpreted("paged_attention")
    args, scale = _paged_case([13, 1, 16, 17, 30, 70], q_heads, kv_heads, 16, 8, dtype, "cpu")
    q, k_cache, v_cache, tables, lens = args
    step_kv = step_kv_case(q, k_cache, tables, lens, rotary)
    before = k_cache.clone()
    caches = k_cache.clone(), v_cache.clone()
    expected = attn.paged_decode_attention_reference(q, *caches, tables, lens, scale, step_kv=step_kv)
    actual = attn.paged_decode_attention(q, k_cache, v_cache, tables, lens, scale, num_splits=splits, step_kv=step_kv)
    assert_matches(actual, expected, "attention")
    assert not torch.equal(caches[0], before)
    assert torch.equal(k_cache, caches[0]) and torch.equal(v_cache, caches[1])


@pytest.mark.parametrize("splits", [None, 3], ids=["one-pass", "split-k"])
@pytest.mark.parametrize("variant", ["softcap", "window"])
def test_paged_decode_interpreted_writes_the_step_under_softcap_and_window(
    interpreted, assert_matches, variant, splits
):
    """With the step's K/V, a sliding window moves where each program's first tile (the one loaded before the
    step's row is written) starts; soft-capping changes the scores of the row replaced in registers."""
    attn = interpreted("paged_attention")
    args, scale = _paged_case([13, 1, 16, 17, 30, 70], 8, 2, 16, 8, torch.float32, "cpu")
    q, k_cache, v_cache, tables, lens = args
    step_kv = step_kv_case(q, k_cache, tables, lens, ROTARY["rotate-half"])
    caches = k_cache.clone(), v_cache.clone()
    options = VARIANTS[variant]
    expected = attn.paged_decode_attention_reference(q, *caches, tables, lens, scale, step_kv=step_kv, **options)
    actual = attn.paged_decode_attention(
        q, k_cache, v_cache, tables, lens, scale, num_splits=splits, step_kv=step_kv, **options
    )
    assert_matches(actual, expected, "attention")
    assert torch.equal(k_cache, caches[0]) and torch.equal(v_cache, caches[1])


GPU_SHAPES = [  # (q heads, kv heads, head dim, block size): Llama-2-7B, Llama-3-8B, a small MQA model
    (32, 32, 128, 16),
    (32, 8, 128, 32),
    (8, 1, 64, 64),
]


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [3, 48], ids=lambda b: f"batch{b}")  # 3: split-K on any GPU
@pytest.mark.parametrize("q_heads,kv_heads,head_dim,page", GPU_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_paged_decode_gpu(assert_matches, dtype, q_heads, kv_heads, head_dim, page, batch):
    from trtllm_compile.kernels import paged_attention as attn

    gen = torch.Generator().manual_seed(batch)
    lens = torch.randint(1, 1500, (batch,), generator=gen).tolist()
    args, scale = _paged_case(lens, q_heads, kv_heads, head_dim, page, dtype, "cuda")
    expected = attn.paged_decode_attention_reference(*args, scale)
    assert_matches(attn.paged_decode_attention(*args, scale), expected, "attention")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["softcap", "window"])
@pytest.mark.parametrize("splits", [None, 4], ids=["auto", "split-k"])
def test_paged_decode_gpu_masks(assert_matches, variant, splits, monkeypatch):
    from trtllm_compile.kernels import paged_attention as attn

    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    kwargs = {"softcap": 50.0} if variant == "softcap" else {"sliding_window": 300}  # Gemma-2-like
    args, scale = _paged_case([1000, 7, 299, 300, 301, 640], 16, 8, 128, 16, torch.bfloat16, "cuda")
    expected = attn.paged_decode_attention_reference(*args, scale, **kwargs)
    actual = attn.paged_decode_attention(*args, scale, **kwargs, num_splits=splits)
    assert_matches(actual, expected, "attention")


@pytest.mark.gpu
def test_paged_decode_gpu_every_plan(assert_matches, monkeypatch):
    """Each plan the tuner may choose computes the same attention (MHA on CUDA or tensor cores, one pass and
    split-K)."""
    from trtllm_compile.kernels import paged_attention as attn
    from trtllm_compile.kernels import tuning

    for lens in ([300, 1, 16, 133] * 10, [900, 5]):  # 40 sequences x 8 heads fill the GPU; 2 split their contexts
        args, scale = _paged_case(lens, 8, 8, 128, 16, torch.bfloat16, "cuda")
        q, k_cache, _, tables = args[:4]
        splits = attn.plan_splits(len(lens) * 8, tables.shape[1] * 16, q.device)
        expected = attn.paged_decode_attention_reference(*args, scale)
        for plan in attn.PLANS:
            monkeypatch.setitem(tuning.plans, attn.plan_key(q, k_cache, splits, 0.0, -1), plan)
            assert_matches(attn.paged_decode_attention(*args, scale), expected, "attention")


@pytest.mark.gpu
def test_paged_decode_gpu_tunes_on_a_sample_not_the_empty_warm_up(monkeypatch):
    """A CUDA-graph warm-up brings only empty padding rows, on which every plan would time alike: the plans are
    timed on TUNE_CONTEXT-token sequences over the call's caches instead."""
    from trtllm_compile.kernels import paged_attention as attn
    from trtllm_compile.kernels import tuning

    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    monkeypatch.setattr(tuning, "plans", {})
    monkeypatch.setattr(tuning, "tuning_log", {})
    samples, make_sample = [], attn._tuning_sample
    monkeypatch.setattr(attn, "_tuning_sample", lambda *a: samples.append(make_sample(*a)) or samples[-1])
    n_seq, heads, page, width = 48, 32, 16, 64
    q = torch.randn(n_seq, heads, 128, dtype=torch.bfloat16, device="cuda")
    k_cache = torch.randn(n_seq * 4, page, heads, 128, dtype=torch.bfloat16, device="cuda")  # fewer blocks: wraps
    tables = torch.zeros(n_seq, width, dtype=torch.int32, device="cuda")
    lens = torch.zeros(n_seq, dtype=torch.int32, device="cuda")

    out = attn.paged_decode_attention(q, k_cache, torch.randn_like(k_cache), tables, lens, 0.1)

    splits = attn.plan_splits(n_seq * heads, width * page, q.device)
    key = attn.plan_key(q, k_cache, splits, 0.0, -1)
    assert set(tuning.tuning_log[key]) == {str(plan) for plan in attn.PLANS}
    assert tuning.plans[key] in attn.PLANS
    sample_tables, sample_lens = samples[0]
    assert sample_lens.tolist() == [attn.TUNE_CONTEXT] * n_seq
    assert sample_tables.shape == (n_seq, attn.TUNE_CONTEXT // page)
    assert int(sample_tables.max()) == k_cache.shape[0] - 1  # consecutive blocks, wrapped over the cache
    assert out.abs().max() == 0  # the empty rows still attend to nothing
