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

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.fx
from torch._inductor import pattern_matcher as pm

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes.remove_noops import remove_noop_nodes

logger = logging.getLogger(__name__)


def trace_pattern(fn: Callable, args: Sequence, **_) -> torch.fx.GraphModule:
    key = _trace_key(fn, args) if _traces is not None else None
    if key is not None and key in _traces:
        return _copy(_traces[key])
    gm = trace_aten(fn, args)
    remove_noop_nodes(gm.graph)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    if key is not None:
        _traces[key] = _copy(gm)
    return gm


# Inductor re-traces a pattern for every match, to check its literals against the matched shapes; the layers of a
# model match with the same shapes, so within one pass over a graph the traces are kept (~20 ms each, one per
# match and layer before). Only within one graph: its symbolic sizes mean nothing in another.
_traces: dict | None = None


@contextlib.contextmanager
def _traces_kept() -> Iterator[None]:
    global _traces
    _traces = {}
    try:
        yield
    finally:
        _traces = None


def _trace_key(fn: Callable, args: Sequence) -> tuple | None:
    """What a trace of `fn(*args)` depends on: its code, defaults and closure, and the args' metadata and scalar
    values. None when something in them cannot be keyed (then it is traced afresh)."""
    try:
        code = getattr(fn, "__code__", fn)
        closure = tuple(_value_key(cell.cell_contents) for cell in getattr(fn, "__closure__", None) or ())
        defaults = _value_key((getattr(fn, "__defaults__", None), getattr(fn, "__kwdefaults__", None)))
        key = (code, closure, defaults, _value_key(list(args)))
        hash(key)
    except (TypeError, ValueError):  # unhashable, or an empty closure cell
        return None
    return key


def _value_key(value):
    if isinstance(value, torch.Tensor):
        meta = (value.dtype, value.device.type, value.requires_grad)
        return ("tensor", tuple(map(str, value.shape)), tuple(map(str, value.stride())), *meta)
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *map(_value_key, value))
    if isinstance(value, dict):
        return ("dict", *((name, _value_key(item)) for name, item in value.items()))
    if isinstance(value, (bool, int, float, str, torch.SymInt, torch.SymFloat, torch.SymBool)):
        return (type(value).__name__, repr(value))  # True, 1 and 1.0 compare equal but trace apart
    return value  # functions and other objects by identity


def _copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A graph of its own: inductor renames the placeholders of the traces it gets."""
    graph = torch.fx.Graph()
    graph._codegen = gm.graph._codegen
    graph.output(graph.graph_copy(gm.graph, {}))
    return torch.fx.GraphModule(gm, graph)


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
        with _traces_kept():
            return self._pass.apply(gm.graph)


def pattern_set(name: str) -> Callable[[Callable[[PatternSet], None]], PatternSet]:
    return functools.partial(PatternSet, name)
