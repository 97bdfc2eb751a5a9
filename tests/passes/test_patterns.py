"""The pattern helpers every matching pass is built on: lazy registration, one pattern per dtype form, and the
graphs `capture.trace_aten` hands them."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes import patterns as patterns_module
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


def test_matches_of_one_shape_share_their_traces(trace, monkeypatch):
    """Inductor traces the search and replacement again for every match, to check literals against its shapes;
    within one graph, matches of the same shapes and scalars share those traces."""
    patterns = _doubling_patterns([], (torch.float32,))
    patterns.apply(trace(double_in_fp32, torch.randn(4)))  # registration's traces are not counted
    traced = []
    trace_aten_of_patterns = patterns_module.trace_aten
    monkeypatch.setattr(
        patterns_module, "trace_aten", lambda fn, args: traced.append(fn) or trace_aten_of_patterns(fn, args)
    )

    def three_sites(x, y):
        return double_in_fp32(double_in_fp32(x)) + double_in_fp32(y).sum()

    x, y = torch.randn(4), torch.randn(2, 3)
    gm = trace(three_sites, x, y)
    assert patterns.apply(gm) == 3
    gm.recompile()
    torch.testing.assert_close(gm(x, y), three_sites(x, y), atol=0, rtol=0)
    assert len(traced) == 4  # search and replacement, for shape [4] and for [2, 3]


def test_trace_key_tells_apart_what_traces_apart():
    def pattern(x, flag):
        return x

    key = patterns_module._trace_key
    assert key(pattern, [torch.randn(4), True]) == key(pattern, [torch.zeros(4), True])  # values are not traced
    assert key(pattern, [torch.randn(4), True]) != key(pattern, [torch.randn(4), 1])
    assert key(pattern, [torch.randn(4), 1]) != key(pattern, [torch.randn(4), 1.0])
    assert key(pattern, [torch.randn(4), 1]) != key(pattern, [torch.randn(2, 2), 1])
    assert key(pattern, [torch.randn(4), 1]) != key(pattern, [torch.randn(4, dtype=torch.float16), 1])
    assert key(pattern, [torch.randn(4, 2).t(), 1]) != key(pattern, [torch.randn(2, 4), 1])
    assert key(pattern, [torch.randn(4), [1, 2]]) != key(pattern, [torch.randn(4), (1, 2)])
    scaled = [lambda x, s=s: x * s for s in (2, 3)]  # one code object, two defaults
    assert key(scaled[0], [torch.randn(4)]) != key(scaled[1], [torch.randn(4)])
