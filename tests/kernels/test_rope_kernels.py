"""Rotary embedding kernel against `trtllm::rope`: both layouts, rotate-half, interleaved, partial."""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)
from trtllm_compile.ops.rope import rope_reference

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cos_sin(positions: torch.Tensor, rotary_dim: int, interleaved: bool, dtype):
    """Real rotary tables: HF's cat(freqs, freqs) layout, or GPT-J's repeat-interleaved one."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _case(layout: str, batch, heads, seq, head_dim, rotary_dim, interleaved, dtype, device):
    """x in [B, H, S, D] (cos [B, 1, S, R]) or [B, S, H, D] (cos [B, S, 1, R]); q is a strided view of qkv."""
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(batch, seq, 3 * heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    positions = torch.arange(seq) + torch.randint(0, 500, (batch, 1), generator=gen)  # [B, S]
    cos, sin = (t.to(device) for t in _cos_sin(positions, rotary_dim, interleaved, dtype))
    x = qkv[:, :, :heads]  # [B, S, H, D], not contiguous
    if layout == "bhsd":
        return x.transpose(1, 2), cos[:, None], sin[:, None]
    return x, cos[:, :, None], sin[:, :, None]


CASES = [  # (rotary_dim, head_dim, interleaved): full rotate-half, partial (NeoX/Phi), GPT-J interleaved
    (16, 16, False),
    (8, 16, False),
    (8, 16, True),
]


@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rotary_dim,head_dim,interleaved", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_interpreted(interpreted, assert_matches, reference, dtype, rotary_dim, head_dim, interleaved, layout):
    rope = interpreted("rope")
    x, cos, sin = _case(layout, 2, 3, 5, head_dim, rotary_dim, interleaved, dtype, "cpu")
    assert not x.is_contiguous()
    expected = reference(torch.ops.trtllm.rope, x, cos, sin, interleaved)
    assert_matches(rope.rope(x, cos, sin, interleaved), expected)


def test_rope_interpreted_fp32_tables_and_3d(interpreted, assert_matches, reference):
    """bf16 x with fp32 cos/sin computes in fp32 and rounds once; 3-D x [S, H, D] with cos [S, 1, R]."""
    rope = interpreted("rope")
    x, cos, sin = _case("bshd", 1, 2, 6, 16, 16, False, torch.bfloat16, "cpu")
    x, cos, sin = x[0], cos[0].float(), sin[0].float()
    expected = reference(torch.ops.trtllm.rope, x, cos, sin, False)
    assert_matches(rope.rope(x, cos, sin, False), expected)


GPU_CASES = [  # Llama (128 of 128), GPT-NeoX-style partial (32 of 128), GPT-J (64 of 256, interleaved)
    (128, 128, False),
    (32, 128, False),
    (64, 256, True),
]


@pytest.mark.gpu
@pytest.mark.parametrize("seq", [1, 77], ids=["decode", "prefill"])
@pytest.mark.parametrize("layout", ["bhsd", "bshd"])
@pytest.mark.parametrize("rotary_dim,head_dim,interleaved", GPU_CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_gpu(cuda_ops, assert_matches, reference, dtype, rotary_dim, head_dim, interleaved, layout, seq):
    x, cos, sin = _case(layout, 4, 32, seq, head_dim, rotary_dim, interleaved, dtype, "cuda")
    expected = reference(torch.ops.trtllm.rope, x, cos, sin, interleaved)
    actual = cuda_ops.rope(x, cos, sin, interleaved)
    assert_matches(actual, expected)
    assert torch.equal(actual, rope_reference(x, cos, sin, interleaved))  # rounded step by step as eager rounds


@pytest.mark.gpu
def test_rope_gpu_autotuned(cuda_ops, assert_matches, reference, monkeypatch):
    monkeypatch.setenv("TRTLLM_TRITON_AUTOTUNE", "1")
    x, cos, sin = _case("bhsd", 8, 32, 512, 128, 128, False, torch.bfloat16, "cuda")
    assert_matches(cuda_ops.rope(x, cos, sin, False), reference(torch.ops.trtllm.rope, x, cos, sin, False))
