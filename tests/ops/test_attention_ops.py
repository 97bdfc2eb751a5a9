"""trtllm.attention against Hugging Face's eager attention (Llama's, and Gemma 3's for soft-capping) with masks
built by Hugging Face's mask functions, and against SDPA's own `is_causal`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function
from transformers.models.gemma3 import modeling_gemma3 as gemma3
from transformers.models.llama import modeling_llama as llama

ops = torch.ops.trtllm
DTYPES = [torch.float32, torch.bfloat16]
BATCH, Q_HEADS, HEAD_DIM = 2, 4, 16
SCALE = HEAD_DIM**-0.5
KV_HEADS = {"mha": 4, "gqa": 2, "mqa": 1}


def _qkv(dtype, q_len=6, kv_len=6, kv_heads=2):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, Q_HEADS, q_len, HEAD_DIM, generator=gen)
    k = torch.randn(BATCH, kv_heads, kv_len, HEAD_DIM, generator=gen)
    v = torch.randn(BATCH, kv_heads, kv_len, HEAD_DIM, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def hf_eager(q, k, v, additive_mask=None, softcap=None):
    """Hugging Face's eager attention (repeat_kv for GQA, fp32 softmax), returned as [B, H, S, D] like the op."""
    module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False, head_dim=HEAD_DIM)
    if softcap is None:
        out, _ = llama.eager_attention_forward(module, q, k, v, additive_mask, scaling=SCALE)
    else:
        out, _ = gemma3.eager_attention_forward(module, q, k, v, additive_mask, scaling=SCALE, softcap=softcap)
    return out.transpose(1, 2)


def hf_visibility(mask_function, q_len: int, kv_len: int) -> torch.Tensor:
    """[Sq, Skv] boolean mask of a Hugging Face mask function with query i at position i (SDPA's top-left)."""
    return mask_function(None, None, torch.arange(q_len)[:, None], torch.arange(kv_len)[None, :])


def padding(kv_len: int) -> torch.Tensor:
    """[B, 1, 1, Skv] key padding: the first row is left-padded by two tokens."""
    keep = torch.ones(BATCH, 1, 1, kv_len, dtype=torch.bool)
    keep[0, ..., :2] = False
    return keep


def additive(allowed: torch.Tensor, dtype) -> torch.Tensor:
    """A boolean mask in the additive form Hugging Face hands eager attention (0 or the dtype's minimum)."""
    return torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("heads", list(KV_HEADS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_hf_eager(assert_close, dtype, heads, mask_kind):
    q, k, v = _qkv(dtype, kv_heads=KV_HEADS[heads])
    keep = padding(k.shape[-2])
    mask = {"none": None, "bool": keep, "additive": additive(keep, dtype)}[mask_kind]
    expected = hf_eager(q, k, v, None if mask is None else additive(keep, dtype))
    assert_close(ops.attention(q, k, v, mask, SCALE), expected)


@pytest.mark.parametrize("q_len", [6, 3, 1], ids=["square", "fewer_queries", "one_query"])
@pytest.mark.parametrize("heads", list(KV_HEADS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_is_causal_is_sdpa_is_causal(assert_close, dtype, heads, q_len):
    # Top-left like SDPA's is_causal (the call the op replaces): query i sees keys 0..i whatever the key count.
    q, k, v = _qkv(dtype, q_len=q_len, kv_len=6, kv_heads=KV_HEADS[heads])
    actual = ops.attention(q, k, v, None, SCALE, True)
    assert_close(actual, F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=SCALE, enable_gqa=True))
    assert_close(actual, hf_eager(q, k, v, additive(hf_visibility(causal_mask_function, q_len, 6), dtype)))


@pytest.mark.parametrize("q_len", [6, 3], ids=["square", "fewer_queries"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_sliding_window_matches_hf_mask(assert_close, dtype, q_len):
    q, k, v = _qkv(dtype, q_len=q_len, kv_len=6)
    window = additive(hf_visibility(sliding_window_causal_mask_function(3), q_len, 6), dtype)
    assert_close(ops.attention(q, k, v, None, SCALE, True, 3), hf_eager(q, k, v, window))


@pytest.mark.parametrize("mask_kind", ["bool", "additive"])
def test_explicit_mask_combines_with_causal_and_window(assert_close, mask_kind):
    q, k, v = _qkv(torch.float32)
    keep = torch.ones(BATCH, 1, 1, 6, dtype=torch.bool)
    keep[0, ..., 1] = keep[1, ..., 3] = False  # holes that leave every query a visible key
    mask = keep if mask_kind == "bool" else additive(keep, torch.float32)
    window = hf_visibility(sliding_window_causal_mask_function(3), 6, 6)
    expected = hf_eager(q, k, v, additive(keep & window, torch.float32))
    assert_close(ops.attention(q, k, v, mask, SCALE, True, 3), expected)


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_softcap_matches_gemma3(assert_close, dtype, mask_kind):
    q, k, v = _qkv(dtype)
    q = 8 * q  # large logits, so the cap bends them
    keep = padding(6)
    mask = {"none": None, "bool": keep, "additive": additive(keep, dtype)}[mask_kind]
    expected = hf_eager(q, k, v, None if mask is None else additive(keep, dtype), softcap=5.0)
    assert_close(ops.attention(q, k, v, mask, SCALE, False, -1, 5.0), expected)


def test_softcap_with_causal_window_and_gqa(assert_close):
    q, k, v = _qkv(torch.float32, q_len=4, kv_len=6, kv_heads=1)
    window = additive(hf_visibility(sliding_window_causal_mask_function(3), 4, 6), torch.float32)
    expected = hf_eager(8 * q, k, v, window, softcap=5.0)
    assert_close(ops.attention(8 * q, k, v, None, SCALE, True, 3, 5.0), expected)


def _opcheck_cases():
    q, k, v = _qkv(torch.float32, q_len=3, kv_len=6)
    keep = padding(6)
    bf16 = [t.bfloat16() for t in (q, k, v)]
    return {
        "plain": (q, k, v, None, SCALE),
        "causal_window": (q, k, v, None, SCALE, True, 3),
        "bool_mask": (q, k, v, keep, SCALE, True),
        "additive_mask_softcap": (q, k, v, additive(keep, torch.float32), SCALE, False, -1, 30.0),
        "bf16": (*bf16, additive(keep, torch.bfloat16), SCALE, True),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(opcheck, case):
    opcheck(ops.attention.default, _opcheck_cases()[case])


def test_opcheck_transposed_queries(opcheck):
    q, k, v = _qkv(torch.float32)
    opcheck(ops.attention.default, (q.transpose(1, 2).contiguous().transpose(1, 2), k, v, None, SCALE))
