"""Shared set-up of the op tests: tolerances, stated once, and the opcheck utilities that apply to inference ops."""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)

# (atol, rtol) per dtype, for an op against an independent Hugging Face / torch reference run in the same dtype.
# fp32: the op and the reference compute the same formula, in another order at most (SDPA vs matmul + softmax),
# so only float32 rounding separates them (measured: 4e-7 at most, 4% of the bar). bf16: both round their
# intermediates to bf16, but not at the same points (the fused attention keeps the scores in fp32 where eager
# rounds them; GELU formulas round every step), so an output may land on a neighbouring bf16 value: rtol 2e-2
# is 2.5 ulps (2**-7 relative each) and atol covers outputs near zero (measured: 1 ulp, 60% of the bar).
TOLERANCES = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (2e-2, 2e-2),
}

# The ops are inference-only (no autograd formula is registered), so opcheck runs the checks that apply: the
# schema (mutation and aliasing as declared) and the fake kernel (same shapes, dtypes and strides as the real one).
OPCHECK_UTILS = ("test_schema", "test_faketensor")


@pytest.fixture
def assert_close():
    """assert_close at the tolerance of the reference's dtype (TOLERANCES above); dtypes and shapes must agree."""

    def check(actual: torch.Tensor, expected: torch.Tensor) -> None:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        atol, rtol = TOLERANCES[expected.dtype]
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)

    return check


@pytest.fixture
def opcheck():
    """torch.library.opcheck restricted to OPCHECK_UTILS."""

    def check(op, args: tuple) -> None:
        torch.library.opcheck(op, args, test_utils=OPCHECK_UTILS)

    return check
