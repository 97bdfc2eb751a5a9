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
