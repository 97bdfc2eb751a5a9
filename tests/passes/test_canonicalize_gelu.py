"""canonicalize_gelu: GELU written out with tanh (GPT-2's NewGELU, GPT-J's gelu_new) becomes one aten.gelu."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.activations import ACT2FN, NewGELUActivation

from trtllm_compile.passes.canonicalize_gelu import canonicalize_gelu

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _x(dtype):
    return (3 * torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_new_gelu_becomes_aten_gelu_tanh(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype):
    # The pattern is traced in fp32 only: the formula has no casts, so it matches low-precision graphs as is.
    act = NewGELUActivation()
    gm = trace(act, _x(dtype))
    assert run_pass(canonicalize_gelu, gm) == 1
    assert op_counts(gm) == {"aten.gelu": 1}
    (gelu,) = call_args(gm, torch.ops.aten.gelu.default)
    assert gelu["approximate"] == "tanh"
    assert_same_outputs(gm, act, _x(dtype))


def test_every_occurrence_is_rewritten(trace, run_pass, op_counts, assert_same_outputs):
    gelu_new = ACT2FN["gelu_new"]

    def two_mlps(x):
        return gelu_new(x) + gelu_new(x * 2)

    gm = trace(two_mlps, _x(torch.float32))
    assert run_pass(canonicalize_gelu, gm) == 2
    assert op_counts(gm) == {"aten.gelu": 2, "aten.mul": 1, "aten.add": 1}
    assert_same_outputs(gm, two_mlps, _x(torch.float32))


def _tanh_formula(cubic: float, power: float, sqrt_2_over_pi: float = math.sqrt(2.0 / math.pi)):
    def gelu_like(x):
        return 0.5 * x * (1.0 + torch.tanh(sqrt_2_over_pi * (x + cubic * torch.pow(x, power))))

    return gelu_like


@pytest.mark.parametrize(
    "fn",
    [
        _tanh_formula(0.04, 3.0),  # another cubic coefficient
        _tanh_formula(0.044715, 2.0),  # x^2, not x^3
        _tanh_formula(0.044715, 3.0, sqrt_2_over_pi=0.8),  # another scale inside tanh
    ],
    ids=["coefficient", "power", "scale"],
)
def test_lookalike_formulas_are_left_alone(trace, run_pass, op_counts, fn):
    gm = trace(fn, _x(torch.float32))
    before = op_counts(gm)
    assert run_pass(canonicalize_gelu, gm) == 0
    assert op_counts(gm) == before and "aten.gelu" not in before


def test_aten_gelu_is_already_canonical(trace, run_pass, op_counts):
    gm = trace(ACT2FN["gelu_pytorch_tanh"], _x(torch.float32))
    assert run_pass(canonicalize_gelu, gm) == 0
    assert op_counts(gm) == {"aten.gelu": 1}
