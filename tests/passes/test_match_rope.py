"""match_rope: rotate-half (Llama), interleaved (GPT-J) and partial rotary (slice + cat) become trtllm.rope."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.gptj import modeling_gptj as gptj
from transformers.models.llama import modeling_llama as llama

from trtllm_compile.passes.match_rope import match_rope

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
BATCH, HEADS, SEQ, HEAD_DIM = 2, 4, 3, 8
ROPE = torch.ops.trtllm.rope.default


def _tables(dtype, width=HEAD_DIM):
    """cos/sin of shape [B, S, width] in Hugging Face's cat(freqs, freqs) layout."""
    freqs = torch.arange(SEQ)[:, None] * torch.rand(width // 2, generator=torch.Generator().manual_seed(1))
    emb = torch.cat((freqs, freqs), dim=-1).expand(BATCH, SEQ, width)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _heads(dtype, seed=0):
    """[B, H, S, D] as attention has it: a [B, S, H, D] projection with heads moved forward."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, SEQ, HEADS, HEAD_DIM, generator=gen).to(dtype).transpose(1, 2)


def llama_rope(q, k, cos, sin):
    return llama.apply_rotary_pos_emb(q, k, cos, sin)  # make_fx traces positional parameters only


def neox_rope(q, k, cos, sin):
    return neox.apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_llama_rotate_half_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype):
    args = (_heads(dtype, 0), _heads(dtype, 1), *_tables(dtype))
    gm = trace(llama_rope, *args)
    assert run_pass(match_rope, gm) == 2
    assert op_counts(gm) == {"aten.unsqueeze": 2, "trtllm.rope": 2}
    assert [call["interleaved"] for call in call_args(gm, ROPE)] == [False, False]
    assert_same_outputs(gm, llama_rope, *args)


def _gptj_cos_sin(dtype, width):
    cos, sin = _tables(dtype, width)
    return sin[..., : width // 2], cos[..., : width // 2]  # GPT-J's half-width tables, repeat-interleaved later


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gptj_interleaved_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype):
    x = _heads(dtype).transpose(1, 2)  # GPT-J rotates [B, S, H, D] before moving heads forward
    args = (x, *_gptj_cos_sin(dtype, HEAD_DIM))
    gm = trace(gptj.apply_rotary_pos_emb, *args)
    assert run_pass(match_rope, gm) == 1
    assert op_counts(gm)["trtllm.rope"] == 1 and "aten.stack" not in op_counts(gm)
    (rope,) = call_args(gm, ROPE)
    assert rope["interleaved"] is True
    assert_same_outputs(gm, gptj.apply_rotary_pos_emb, *args)


def gptj_partial_rotary(x, sin, cos):
    """GPTJAttention.forward's partial rotary: rotate the leading slice, concatenate the rest back."""
    rotary_dim = 2 * sin.shape[-1]
    x_rot = gptj.apply_rotary_pos_emb(x[:, :, :, :rotary_dim], sin, cos)
    return torch.cat([x_rot, x[:, :, :, rotary_dim:]], dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gptj_partial_rotary_folds_into_one_op(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype):
    args = (_heads(dtype).transpose(1, 2), *_gptj_cos_sin(dtype, 4))
    gm = trace(gptj_partial_rotary, *args)
    # One pattern match, then the slice + cat around it folds in: the op passes the other features through.
    assert run_pass(match_rope, gm) == 2
    counts = op_counts(gm)
    assert counts["trtllm.rope"] == 1 and "aten.cat" not in counts and "aten.slice" not in counts
    (rope,) = call_args(gm, ROPE)
    assert rope["x"].op == "placeholder" and rope["cos"].meta["val"].shape[-1] == 4  # the whole head rotates 4
    assert_same_outputs(gm, gptj_partial_rotary, *args)


def test_gpt_neox_partial_rotate_half_folds_into_one_op(trace, run_pass, op_counts, assert_same_outputs):
    cos, sin = _tables(torch.float32, 4)
    args = (_heads(torch.float32, 0), _heads(torch.float32, 1), cos, sin)
    gm = trace(neox_rope, *args)
    assert run_pass(match_rope, gm) == 4  # two matches, two folds
    counts = op_counts(gm)
    assert counts["trtllm.rope"] == 2 and "aten.cat" not in counts
    assert_same_outputs(gm, neox_rope, *args)


def _rotate_half_split_at(split):
    def rotate(x, cos, sin):
        rotated = torch.cat((-x[..., split:], x[..., :split]), dim=-1)
        return x * cos + rotated * sin

    return rotate


def _rotate_half_with_swapped_sign(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], -x[..., :half]), dim=-1) * sin


def test_rotate_half_written_out_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    # The form the lookalikes below each change in one place.
    fn = _rotate_half_split_at(HEAD_DIM // 2)
    cos, sin = _tables(torch.float32)
    args = (_heads(torch.float32), cos[:, None], sin[:, None])
    gm = trace(fn, *args)
    assert run_pass(match_rope, gm) == 1
    assert op_counts(gm) == {"trtllm.rope": 1}
    assert_same_outputs(gm, fn, *args)


@pytest.mark.parametrize(
    "fn, cos_width",
    [
        (_rotate_half_split_at(3), HEAD_DIM),  # not at the middle
        (_rotate_half_with_swapped_sign, HEAD_DIM),
        (_rotate_half_split_at(HEAD_DIM // 2), 1),  # cos broadcast along the features: nothing says how many rotate
    ],
    ids=["split_off_center", "sign", "cos_broadcast_over_features"],
)
def test_rope_lookalikes_are_left_alone(trace, run_pass, op_counts, fn, cos_width):
    cos, sin = _tables(torch.float32)
    args = (_heads(torch.float32), cos[:, None, :, :cos_width], sin[:, None, :, :cos_width])
    gm = trace(fn, *args)
    assert run_pass(match_rope, gm) == 0
    assert "trtllm.rope" not in op_counts(gm)


def test_partial_rotary_with_another_split_does_not_fold(trace, run_pass, op_counts, assert_same_outputs):
    def overlapping(x, sin, cos):  # the passed-through slice starts before the rotated one ends
        x_rot = gptj.apply_rotary_pos_emb(x[:, :, :, :4], sin, cos)
        return torch.cat([x_rot, x[:, :, :, 2:]], dim=-1)

    args = (_heads(torch.float32).transpose(1, 2), *_gptj_cos_sin(torch.float32, 4))
    gm = trace(overlapping, *args)
    assert run_pass(match_rope, gm) == 1
    assert op_counts(gm)["aten.cat"] == 1
    assert_same_outputs(gm, overlapping, *args)


def test_partial_rotary_that_drops_features_does_not_fold(trace, run_pass, op_counts, assert_same_outputs):
    def truncated(x, sin, cos):
        x_rot = gptj.apply_rotary_pos_emb(x[:, :, :, :4], sin, cos)
        return torch.cat([x_rot, x[:, :, :, 4:6]], dim=-1)

    args = (_heads(torch.float32).transpose(1, 2), *_gptj_cos_sin(torch.float32, 4))
    gm = trace(truncated, *args)
    assert run_pass(match_rope, gm) == 1
    assert op_counts(gm)["aten.cat"] == 1
    assert_same_outputs(gm, truncated, *args)


def test_concatenation_along_dim_0_does_not_fold(trace, run_pass, op_counts, assert_same_outputs):
    def stacked_halves(x, sin, cos):  # rotated and passed halves stacked along the batch: not partial rotary
        x_rot = gptj.apply_rotary_pos_emb(x[:, :, :, :4], sin, cos)
        return torch.cat([x_rot, x[:, :, :, 4:]])

    args = (_heads(torch.float32).transpose(1, 2), *_gptj_cos_sin(torch.float32, 4))
    gm = trace(stacked_halves, *args)
    assert run_pass(match_rope, gm) == 1
    assert op_counts(gm)["aten.cat"] == 1
    assert_same_outputs(gm, stacked_halves, *args)
