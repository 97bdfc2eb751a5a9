"""match_attention: SDPA calls and Hugging Face's eager attention forms become trtllm.attention."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.models.gemma3 import modeling_gemma3 as gemma3
from transformers.models.gpt2 import modeling_gpt2 as gpt2
from transformers.models.gptj import modeling_gptj as gptj
from transformers.models.llama import modeling_llama as llama

from trtllm_compile.passes.match_attention import match_attention

BATCH, Q_HEADS, HEAD_DIM = 2, 4, 8
SCALE = HEAD_DIM**-0.5
ATTENTION = torch.ops.trtllm.attention.default
LOW_PRECISION = [torch.float16, torch.bfloat16]
# Ops the fused attention replaces: none of them may survive a match.
UNFUSED = {"aten.scaled_dot_product_attention", "aten.matmul", "aten.softmax", "aten.expand", "aten.tanh"}


def _qkv(dtype=torch.float32, kv_heads=Q_HEADS, q_len=5, kv_len=5):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(BATCH, Q_HEADS, q_len, HEAD_DIM, generator=gen)
    k = torch.randn(BATCH, kv_heads, kv_len, HEAD_DIM, generator=gen)
    v = torch.randn(BATCH, kv_heads, kv_len, HEAD_DIM, generator=gen)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _padding_mask(dtype, q_len=5, kv_len=5):
    """[B, 1, Sq, Skv] key padding in the form a model hands its attention: boolean, or additive in `dtype`."""
    keep = torch.ones(BATCH, 1, q_len, kv_len, dtype=torch.bool)
    keep[0, ..., :2] = False
    if dtype == torch.bool:
        return keep
    return torch.zeros(keep.shape, dtype=dtype).masked_fill(~keep, torch.finfo(dtype).min)


def _assert_fused(gm, op_counts):
    counts = op_counts(gm)
    assert counts["trtllm.attention"] == 1
    assert not UNFUSED & set(counts), counts


# --- SDPA -------------------------------------------------------------------------------------------------------


def sdpa(kv_heads: str, is_causal: bool, with_mask: bool = False):
    """SDPA as models call it; kv_heads: "mha", "gqa" (enable_gqa) or "repeat_kv" (HF's expand + reshape)."""

    def attend(q, k, v, mask=None):
        if kv_heads == "repeat_kv":
            k, v = repeat_kv(k, Q_HEADS // k.shape[1]), repeat_kv(v, Q_HEADS // v.shape[1])
        gqa = {"enable_gqa": True} if kv_heads == "gqa" else {}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=SCALE, **gqa)

    return with_fixed_arity(attend, with_mask)


def with_fixed_arity(attend, with_mask: bool):
    """`attend` taking (q, k, v, mask) or (q, k, v): make_fx traces a function's positional parameters only."""
    if with_mask:
        return lambda q, k, v, mask: attend(q, k, v, mask)
    return lambda q, k, v: attend(q, k, v)


SDPA_CASES = [
    (kv_heads, mask, is_causal)
    for kv_heads, mask, is_causal in itertools.product(
        ("mha", "gqa", "repeat_kv"), ("none", "additive", "bool"), (False, True)
    )
    if mask == "none" or not is_causal  # SDPA rejects an explicit mask together with is_causal
]


@pytest.mark.parametrize("kv_heads, mask, is_causal", SDPA_CASES)
def test_sdpa_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, kv_heads, mask, is_causal):
    fn = sdpa(kv_heads, is_causal, with_mask=mask != "none")
    args = _qkv(kv_heads=Q_HEADS if kv_heads == "mha" else 2)
    if mask != "none":
        args = (*args, _padding_mask(torch.bool if mask == "bool" else torch.float32))
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    assert op_counts(gm) == {"trtllm.attention": 1}
    (fused,) = call_args(gm, ATTENTION)
    assert (fused["scale"], fused["is_causal"], fused["softcap"]) == (SCALE, is_causal, 0.0)
    assert (fused["attn_mask"] is None) == (mask == "none")
    assert_same_outputs(gm, fn, *args)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("kv_heads", ["gqa", "repeat_kv"])
def test_sdpa_in_low_precision_is_matched(trace, run_pass, op_counts, assert_same_outputs, kv_heads, dtype):
    fn = sdpa(kv_heads, is_causal=False, with_mask=True)
    args = (*_qkv(dtype, kv_heads=2), _padding_mask(dtype))
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    assert op_counts(gm) == {"trtllm.attention": 1}
    assert_same_outputs(gm, fn, *args)


@pytest.mark.parametrize("q_len", [5, 2], ids=["prefill", "chunk"])
@pytest.mark.parametrize("with_mask", [False, True], ids=["causal", "padding_mask"])
def test_hf_sdpa_attention_forward_is_matched(trace, run_pass, op_counts, assert_same_outputs, with_mask, q_len):
    # Hugging Face's own SDPA integration: enable_gqa without a mask, repeat_kv with one, causal when maskless.
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)

    def attend(q, k, v, mask=None):
        return sdpa_attention_forward(module, q, k, v, mask, scaling=SCALE)[0]

    attention_layer = with_fixed_arity(attend, with_mask)
    args = _qkv(kv_heads=2, q_len=q_len, kv_len=5)
    if with_mask:
        args = (*args, _padding_mask(torch.float32, q_len=q_len))
    gm = trace(attention_layer, *args)
    assert run_pass(match_attention, gm) == 1
    _assert_fused(gm, op_counts)
    assert_same_outputs(gm, attention_layer, *args)


def test_sdpa_is_causal_with_fewer_queries_than_keys_keeps_its_meaning(trace, run_pass, assert_same_outputs):
    # SDPA aligns is_causal top-left whatever the key count; the fused op must mean the same.
    fn = sdpa("gqa", is_causal=True)
    args = _qkv(kv_heads=2, q_len=3, kv_len=5)
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    assert_same_outputs(gm, fn, *args)


def test_every_layer_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    fn = sdpa("gqa", is_causal=True)

    def two_layers(q, k, v):
        return fn(fn(q, k, v), k, v)

    args = _qkv(kv_heads=2)
    gm = trace(two_layers, *args)
    assert run_pass(match_attention, gm) == 2
    assert op_counts(gm) == {"trtllm.attention": 2}
    assert_same_outputs(gm, two_layers, *args)


def test_sdpa_with_default_scale_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    def default_scale(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    args = _qkv()
    gm = trace(default_scale, *args)
    assert run_pass(match_attention, gm) == 1
    assert_same_outputs(gm, default_scale, *args)


def test_sdpa_with_dropout_is_left_alone(trace, run_pass, op_counts):
    def training_attention(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, dropout_p=0.1, scale=SCALE)

    gm = trace(training_attention, *_qkv())
    assert run_pass(match_attention, gm) == 0
    assert op_counts(gm) == {"aten.scaled_dot_product_attention": 1}


# --- eager attention ----------------------------------------------------------------------------------------------


def hf_eager(form: str, softcap: float | None = None, with_mask: bool = False):
    """Hugging Face's eager_attention_forward of a model family (its output only, as the decoder layer uses it)."""
    forward = {"llama": llama, "gemma3": gemma3, "gpt2": gpt2, "gptj": gptj}[form].eager_attention_forward
    extra = {"softcap": softcap} if form == "gemma3" else {}

    def attend(q, k, v, mask=None):
        module = SimpleNamespace(num_key_value_groups=q.shape[1] // k.shape[1], training=False, head_dim=HEAD_DIM)
        out, _ = forward(module, q, k, v, mask, scaling=SCALE, dropout=0.0, **extra)
        return out

    return with_fixed_arity(attend, with_mask)


EAGER_CASES = {  # name -> (form, softcap, kv heads)
    "llama_mha": ("llama", None, Q_HEADS),
    "llama_gqa": ("llama", None, 2),
    "gemma3_softcap_gqa": ("gemma3", 50.0, 2),
    "gemma3_softcap_mha": ("gemma3", 50.0, Q_HEADS),
    "gpt2": ("gpt2", None, Q_HEADS),
    "gptj": ("gptj", None, Q_HEADS),
}


@pytest.mark.parametrize("with_mask", [False, True], ids=["no_mask", "mask"])
@pytest.mark.parametrize("dtype", [torch.float32, *LOW_PRECISION], ids=str)
@pytest.mark.parametrize("case", list(EAGER_CASES))
def test_hf_eager_attention_is_matched(
    trace, run_pass, op_counts, call_args, assert_same_outputs, case, dtype, with_mask
):
    form, softcap, kv_heads = EAGER_CASES[case]
    fn = hf_eager(form, softcap, with_mask)
    args = _qkv(dtype, kv_heads=kv_heads)
    if form == "gemma3":
        args = (4 * args[0], *args[1:])  # logits large enough for the cap to bend them
    if with_mask:
        args = (*args, _padding_mask(dtype))
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    _assert_fused(gm, op_counts)
    (fused,) = call_args(gm, ATTENTION)
    assert (fused["scale"], fused["is_causal"], fused["softcap"]) == (SCALE, False, softcap or 0.0)
    assert_same_outputs(gm, fn, *args)


def _eager_variant(probabilities):
    def attend(q, k, v, mask):
        scores = torch.matmul(q, k.transpose(2, 3)) * SCALE
        return torch.matmul(probabilities(scores, mask), v)

    return attend


def test_eager_attention_written_out_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    # The form the lookalikes below each change in one place.
    fn = _eager_variant(lambda s, m: F.softmax(s + m, dim=-1, dtype=torch.float32))
    args = (*_qkv(), _padding_mask(torch.float32))
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    assert op_counts(gm) == {"trtllm.attention": 1}
    assert_same_outputs(gm, fn, *args)


LOOKALIKES = {
    "softmax_over_queries": _eager_variant(lambda s, m: F.softmax(s + m, dim=-2, dtype=torch.float32)),
    "mask_multiplied": _eager_variant(lambda s, m: F.softmax(s * m, dim=-1, dtype=torch.float32)),
    "mask_after_softmax": _eager_variant(lambda s, m: F.softmax(s, dim=-1, dtype=torch.float32) + m),
    "cap_constants_differ": _eager_variant(lambda s, m: F.softmax(torch.tanh(s / 30.0) * 50.0 + m, dim=-1)),
}


@pytest.mark.parametrize("name", list(LOOKALIKES))
def test_attention_lookalikes_are_left_alone(trace, run_pass, op_counts, name):
    gm = trace(LOOKALIKES[name], *_qkv(), _padding_mask(torch.float32))
    assert run_pass(match_attention, gm) == 0
    assert "trtllm.attention" not in op_counts(gm) and op_counts(gm)["aten.matmul"] == 2


# --- GQA group sizes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["sdpa", "eager"])
def test_repeat_kv_of_any_group_size_is_absorbed(trace, run_pass, op_counts, assert_same_outputs, form):
    fn = sdpa("repeat_kv", is_causal=False, with_mask=True) if form == "sdpa" else hf_eager("llama", with_mask=True)
    args = (*_qkv(kv_heads=1), _padding_mask(torch.float32))
    gm = trace(fn, *args)
    assert run_pass(match_attention, gm) == 1
    _assert_fused(gm, op_counts)
    assert_same_outputs(gm, fn, *args)
