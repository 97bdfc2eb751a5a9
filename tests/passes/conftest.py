"""Shared set-up of the pass tests: trace a plain PyTorch function as the backend traces a model, run one pass
the way `run_passes` does, count what the graph holds, and compare it with the function it came from.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import pytest
import torch
import torch.fx
from support import rel_err
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.operator_schemas import normalize_function

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)
from trtllm_compile.capture import trace_aten
from trtllm_compile.fx_utils import op_name
from trtllm_compile.passes.remove_noops import remove_noops

# Largest error of a rewritten graph relative to the largest output of the function it was traced from
# (support.rel_err). fp32: a fused op computes what its pattern computed, in another order at most (SDPA vs
# matmul + softmax, one fused residual add), so float32 rounding is all that separates them (measured <= 2e-7).
# fp16/bf16: the fused ops keep intermediates in fp32 where the eager graph rounds them (attention scores,
# explicit GELU steps), so an output may land on a neighbouring value of the dtype: 2 ulps at the largest
# magnitude, 2 * 2**-10 (fp16) and 2 * 2**-7 (bf16), allow that (measured: 1 ulp fp16, 0.75 ulp bf16).
REL_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.fixture
def trace():
    """Trace `fn(*args)` to pre-dispatch ATen and remove no-ops, as the backend does with a Dynamo graph.

    One fake mode covers the whole trace (the pattern matcher needs every node's value from the same one), and
    tensors `fn` closes over become `get_attr` constants: frozen weights, as `capture.freeze_inputs` leaves them.
    """

    def run(fn: Callable, *args, clean: bool = True) -> torch.fx.GraphModule:
        mode = FakeTensorMode(allow_non_fake_inputs=True)
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        gm = trace_aten(fn, fake_args, mode)
        if clean:
            remove_noops(gm, None)
            gm.graph.eliminate_dead_code()
            gm.recompile()
        return gm

    return run


@pytest.fixture
def run_pass():
    """Call a registered pass function directly, then clean up and check the graph as `run_passes` does."""

    def run(pass_fn: Callable, gm: torch.fx.GraphModule) -> int:
        num_rewrites = pass_fn(gm, None)
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
        return num_rewrites

    return run


@pytest.fixture
def op_counts():
    """How many call_function nodes of each op a graph holds, by name: {"aten.linear": 3, "trtllm.rope": 2}."""

    def count(gm: torch.fx.GraphModule) -> collections.Counter:
        return collections.Counter(op_name(n) for n in gm.graph.nodes if n.op == "call_function")

    return count


@pytest.fixture
def call_args():
    """The arguments of every call of `op` in a graph, by name with defaults filled in: [{"eps": 1e-6, ...}]."""

    def named(gm: torch.fx.GraphModule, op) -> list[dict]:
        calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == op]
        return [normalize_function(n.target, n.args, n.kwargs, normalize_to_only_use_kwargs=True).kwargs for n in calls]

    return named


@pytest.fixture
def assert_same_outputs():
    """The rewritten graph computes what `fn` computes, within REL_TOL of the first output's dtype."""

    def check(gm: torch.fx.GraphModule, fn: Callable, *args) -> None:
        expected = fn(*args)
        actual = gm(*args)
        expected = expected if isinstance(expected, tuple | list) else (expected,)
        actual = actual if isinstance(actual, tuple | list) else (actual,)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert a.shape == e.shape and a.dtype == e.dtype
            assert rel_err(a, e) <= REL_TOL[e.dtype], f"rel err {rel_err(a, e):.2e} > {REL_TOL[e.dtype]:.0e}"

    return check
