"""trtllm.rope against Hugging Face's rotary embeddings: Llama's rotate-half, GPT-NeoX's partial rotate-half and
GPT-J's interleaved (full and partial) forms, with the cos/sin each model's rotary module computes."""

from __future__ import annotations

import pytest
import torch
from transformers import GPTJConfig, GPTNeoXConfig, LlamaConfig
from transformers.models.gpt_neox import modeling_gpt_neox as neox
from transformers.models.gptj import modeling_gptj as gptj
from transformers.models.llama import modeling_llama as llama

ops = torch.ops.trtllm
DTYPES = [torch.float32, torch.bfloat16]
BATCH, SEQ, HEADS, HEAD_DIM = 2, 5, 4, 16


def _heads(dtype, seed=0):
    """Queries as attention computes them: [B, S, H, D] projections viewed as [B, H, S, D] (non-contiguous)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(BATCH, SEQ, HEADS, HEAD_DIM, generator=gen).to(dtype).transpose(1, 2)


def _position_ids():
    # Rows at different offsets, as in a batch of continuing sequences.
    return torch.arange(SEQ)[None] + torch.tensor([[0], [7]])


LLAMA = LlamaConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS)
NEOX = GPTNeoXConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, rotary_pct=0.5)


def _cos_sin(rotary_embedding, config, dtype):
    """The tables a model's rotary module computes for `_position_ids()`, in `dtype`."""
    return rotary_embedding(config)(torch.empty(0, dtype=dtype), _position_ids())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotate_half_matches_llama(assert_close, dtype):
    cos, sin = _cos_sin(llama.LlamaRotaryEmbedding, LLAMA, dtype)
    q, k = _heads(dtype, 0), _heads(dtype, 1)
    q_ref, k_ref = llama.apply_rotary_pos_emb(q, k, cos, sin)
    assert_close(ops.rope(q, cos[:, None], sin[:, None], False), q_ref)
    assert_close(ops.rope(k, cos[:, None], sin[:, None], False), k_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_partial_rotate_half_matches_gpt_neox(assert_close, dtype):
    cos, sin = _cos_sin(neox.GPTNeoXRotaryEmbedding, NEOX, dtype)
    assert cos.shape[-1] == HEAD_DIM // 2  # only the leading half of each head rotates
    q, k = _heads(dtype, 0), _heads(dtype, 1)
    q_ref, k_ref = neox.apply_rotary_pos_emb(q, k, cos, sin)
    assert_close(ops.rope(q, cos[:, None], sin[:, None], False), q_ref)
    assert_close(ops.rope(k, cos[:, None], sin[:, None], False), k_ref)


def _gptj_rotate(x, sin, cos, rotary_dim):
    """GPTJAttention.forward's rotary step on a [B, S, H, D] tensor (rotate a leading slice, keep the rest)."""
    if rotary_dim == x.shape[-1]:
        return gptj.apply_rotary_pos_emb(x, sin, cos)
    return torch.cat([gptj.apply_rotary_pos_emb(x[..., :rotary_dim], sin, cos), x[..., rotary_dim:]], dim=-1)


@pytest.mark.parametrize("rotary_dim", [HEAD_DIM, 8], ids=["full", "partial"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_interleaved_matches_gptj(assert_close, dtype, rotary_dim):
    config = GPTJConfig(n_embd=HEADS * HEAD_DIM, n_head=HEADS, rotary_dim=rotary_dim, n_positions=32)
    sin, cos = _cos_sin(gptj.GPTJRotaryEmbedding, config, dtype)  # GPT-J returns them in this order
    x = _heads(dtype).transpose(1, 2)  # GPT-J rotates before moving heads forward: [B, S, H, D]
    # The op takes one cos/sin value per rotated feature: GPT-J's repeat-interleaved layout, broadcast over heads.
    cos_op, sin_op = (t.repeat_interleave(2, dim=-1)[:, :, None] for t in (cos, sin))
    assert_close(ops.rope(x, cos_op, sin_op, True), _gptj_rotate(x, sin, cos, rotary_dim))


def test_output_keeps_the_input_dtype_with_fp32_tables():
    cos, sin = _cos_sin(llama.LlamaRotaryEmbedding, LLAMA, torch.float32)
    assert ops.rope(_heads(torch.bfloat16), cos[:, None], sin[:, None], False).dtype == torch.bfloat16


def _opcheck_cases():
    cos, sin = _cos_sin(llama.LlamaRotaryEmbedding, LLAMA, torch.float32)
    cos, sin = cos[:, None], sin[:, None]
    q = _heads(torch.float32)
    return {
        "rotate_half": (q.contiguous(), cos, sin, False),
        "rotate_half_transposed": (q, cos, sin, False),
        "interleaved": (q.contiguous(), cos, sin, True),
        "partial": (q.contiguous(), cos[..., :8], sin[..., :8], False),
        "partial_interleaved": (q.contiguous(), cos[..., :8], sin[..., :8], True),
        "bf16_fp32_tables": (q.bfloat16(), cos, sin, False),
    }


@pytest.mark.parametrize("case", list(_opcheck_cases()))
def test_opcheck(opcheck, case):
    opcheck(ops.rope.default, _opcheck_cases()[case])


def test_opcheck_partial_rotary_of_transposed_heads(opcheck):
    cos, sin = _cos_sin(llama.LlamaRotaryEmbedding, LLAMA, torch.float32)
    opcheck(ops.rope.default, (_heads(torch.float32), cos[:, None, :, :8], sin[:, None, :, :8], False))
