"""The pass registry: one pass per file, registered by decorator, run in stage order.

A pass is `fn(gm, config) -> int` returning how many rewrites it made; the registry times it, lints the graph
and hands back a typed `PassResult`, so every compile can say what each stage did.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch.fx

logger = logging.getLogger(__name__)


class Stage(enum.IntEnum):
    """Pipeline order: later stages may rely on what earlier ones produced, never the reverse."""

    CANONICALIZE = 0
    MATCH = 1
    FUSE = 2
    QUANTIZE = 3
    SHARD = 4
    CACHE = 5
    LOWER = 6


# What torch.compile graphs get; the later stages need a whole-model step graph (the runtime's).
GRAPH_STAGES = frozenset({Stage.CANONICALIZE, Stage.MATCH, Stage.FUSE, Stage.QUANTIZE})

PassFn = Callable[[torch.fx.GraphModule, object], int]


@dataclass(frozen=True)
class PassSpec:
    name: str
    stage: Stage
    fn: PassFn
    doc: str


@dataclass(frozen=True)
class PassResult:
    name: str
    stage: Stage
    num_rewrites: int
    seconds: float


_PASSES: dict[str, PassSpec] = {}


def register_pass(stage: Stage, name: str | None = None) -> Callable[[PassFn], PassFn]:
    """Register `fn` to run in `stage`; passes of one stage run in registration (import) order."""

    def decorate(fn: PassFn) -> PassFn:
        pass_name = name or fn.__name__
        if pass_name in _PASSES:
            raise ValueError(f"pass {pass_name!r} is registered twice")
        _PASSES[pass_name] = PassSpec(pass_name, stage, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return decorate


def registered_passes(stages: frozenset[Stage] | None = None) -> list[PassSpec]:
    specs = [spec for spec in _PASSES.values() if stages is None or spec.stage in stages]
    return sorted(specs, key=lambda spec: spec.stage)  # sorted() is stable: import order within a stage


def run_passes(
    gm: torch.fx.GraphModule,
    config: object,
    stages: set[Stage] | None = None,
    skip: frozenset[str] = frozenset(),
) -> list[PassResult]:
    unknown = sorted(set(skip) - {spec.name for spec in registered_passes()})
    if unknown:
        known = ", ".join(spec.name for spec in registered_passes())
        raise ValueError(f"disable_passes names unknown pass(es) {unknown}; the registered passes are: {known}")
    results = []
    for spec in registered_passes(stages):
        if spec.name in skip:
            continue
        start = time.perf_counter()
        num_rewrites = spec.fn(gm, config)
        if num_rewrites:
            gm.graph.eliminate_dead_code()
            gm.graph.lint()
            gm.recompile()
        result = PassResult(spec.name, spec.stage, num_rewrites, time.perf_counter() - start)
        logger.debug("%s: %d rewrites in %.3fs", spec.name, num_rewrites, result.seconds)
        results.append(result)
    return results
