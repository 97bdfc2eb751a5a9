"""The pattern helpers every matching pass is built on: lazy registration, one pattern per dtype form, and the
graphs `capture.trace_aten` hands them."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes.match_norm import match_rms_norm
from trtllm_compile.passes.patterns import PatternSet
from trtllm_compile.passes.remove_noops import remove_noops


def double_in_fp32(x):
    """A pattern whose casts are no-ops in fp32 graphs and real in low-precision ones."""
    return (x.to(torch.float32) * 2).to(x.dtype)


def _doubling_patterns(registrations: list, dtypes) -> PatternSet:
    def register(patterns: PatternSet) -> None:
        registrations.append(dtypes)
        patterns.add(double_in_fp32, lambda x: x + x, lambda dtype: [torch.randn(4, dtype=dtype)], dtypes=dtypes)

    return PatternSet("doubling", register)


def test_patterns_are_traced_on_first_use_only(trace):
    registrations = []
    patterns = _doubling_patterns(registrations, (torch.float32,))
    assert registrations == []
    patterns.apply(trace(double_in_fp32, torch.randn(4)))
    patterns.apply(trace(double_in_fp32, torch.randn(4)))
    assert registrations == [(torch.float32,)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_each_graph_meets_the_pattern_form_of_its_dtype(trace, op_counts, dtype):
    # fp32 graphs lose the casts in cleanup; the fp16 form keeps them and matches bf16 too (dtypes are re-traced).
    patterns = _doubling_patterns([], (torch.float32, torch.float16))
    x = torch.randn(2, 4).to(dtype)
    gm = trace(double_in_fp32, x)
    assert patterns.apply(gm) == 1
    gm.graph.eliminate_dead_code()
    gm.recompile()
    assert op_counts(gm) == {"aten.add": 1}
    torch.testing.assert_close(gm(x), double_in_fp32(x), atol=0, rtol=0)


def test_graph_traced_from_real_tensors_can_be_matched(run_pass, op_counts):
    norm = LlamaRMSNorm(16).eval()
    gm = trace_aten(norm, (torch.randn(2, 3, 16),))
    remove_noops(gm, None)
    assert run_pass(match_rms_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.rms_norm": 1}
