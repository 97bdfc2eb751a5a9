"""kernels/sampling.py: each row's argmax, the same index as torch's argmax (first of ties, NaN the largest)."""

from __future__ import annotations

import pytest
import torch


def _logits(vocab: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    """Five rows: a tie of the first and the last but one value, a NaN, all -inf, and two plain rows."""
    logits = torch.randn(5, vocab, generator=torch.Generator().manual_seed(vocab))
    logits[0, [3, vocab - 2]] = 10.0
    logits[1, vocab // 2] = float("nan")
    logits[2] = -float("inf")
    return logits.to(device, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("block", [64, 512], ids=["five-tiles", "one-tile"])
def test_argmax_interpreted(interpreted, dtype, block):
    sampling = interpreted("sampling")
    logits = _logits(300, dtype, "cpu")
    assert torch.equal(sampling.argmax(logits, block=block), logits.argmax(-1))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("vocab", [7, 32000, 49152, 262144])
def test_argmax_gpu(dtype, vocab):
    from trtllm_compile.kernels import sampling

    logits = _logits(vocab, dtype, "cuda")
    assert torch.equal(sampling.argmax(logits), logits.argmax(-1))
    assert torch.equal(sampling.argmax(logits[3:]), logits[3:].argmax(-1))  # a row's view


def _feed_operands(device: str):
    """Six input tokens, three fed from the samples (rows 2, 0, 2), the rest of the [2, 5] table unused (-1)."""
    token_ids = torch.arange(100, 106, device=device)
    pending_at = torch.tensor([[4, 0, 5, -1, -1], [2, 0, 2, -1, -1]], device=device)
    samples = torch.tensor([7, 8, 9, 10], device=device)
    expected = torch.tensor([7, 101, 102, 103, 9, 9], device=device)
    return token_ids, pending_at, samples, expected


def test_feed_samples_interpreted(interpreted):
    sampling = interpreted("sampling")
    token_ids, pending_at, samples, expected = _feed_operands("cpu")
    sampling.feed_samples(token_ids, pending_at, samples)
    assert torch.equal(token_ids, expected)


@pytest.mark.gpu
def test_feed_samples_gpu():
    from trtllm_compile.kernels import sampling

    token_ids, pending_at, samples, expected = _feed_operands("cuda")
    sampling.feed_samples(token_ids, pending_at, samples)
    assert torch.equal(token_ids, expected)
