"""Pattern helpers on top of inductor's pattern matcher.

A pattern is a plain PyTorch function (the search) and another (the replacement); both are traced with the
same tracer as the model graph (`capture.trace_aten` + the no-op cleanup), so a pattern reads like the model
code it matches. Each pattern is traced at fp32 and at fp16, because casts that are no-ops in fp32 graphs are
real in low-precision ones. Literals are wildcards in the first, structural match; inductor then re-traces the
search function with the matched inputs' real shapes and values and compares every literal exactly, so
reduction dims, slice points and flags are checked without hand-written checks. `extra_check` is left for
conditions on the inputs themselves.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import torch
import torch.fx
from torch._inductor import pattern_matcher as pm

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes.remove_noops import remove_noop_nodes

logger = logging.getLogger(__name__)


def trace_pattern(fn: Callable, args: Sequence, **_) -> torch.fx.GraphModule:
    gm = trace_aten(fn, args)
    remove_noop_nodes(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


class PatternSet:
    """The patterns of one pass, registered lazily on first use (tracing them costs ~100 ms each)."""

    def __init__(self, name: str, register: Callable[[PatternSet], None]):
        self.name = name
        self._register = register
        self._pass: pm.PatternMatcherPass | None = None

    def add(
        self,
        search: Callable,
        replace: Callable,
        example_inputs: Callable[[torch.dtype], list],
        scalars: dict[str, float | int] | None = None,
        extra_check: Callable[[pm.Match], bool] = lambda match: True,
        dtypes: Sequence[torch.dtype] = (torch.float32, torch.float16),
    ) -> None:
        for dtype in dtypes:
            pm.register_replacement(
                search,
                replace,
                example_inputs(dtype),
                trace_pattern,
                self._pass,
                extra_check=extra_check,
                scalar_workaround=scalars,
                skip_duplicates=True,
            )

    def apply(self, gm: torch.fx.GraphModule) -> int:
        if self._pass is None:
            self._pass = pm.PatternMatcherPass(pass_name=self.name)
            with torch.no_grad():
                self._register(self)
        return self._pass.apply(gm.graph)


def pattern_set(name: str) -> Callable[[Callable[[PatternSet], None]], PatternSet]:
    return functools.partial(PatternSet, name)
