"""Public entry points: `explain` (what would fuse) and `compile` (compile a model in place)."""

from __future__ import annotations

import functools

import torch

from trtllm_compile.backend import make_backend
from trtllm_compile.config import CompileConfig
from trtllm_compile.report import CompileReport


def _merged(reports: list[CompileReport]) -> CompileReport:
    return functools.reduce(CompileReport.merge, reports, CompileReport())


def explain(model: torch.nn.Module, *example_args, options: dict | None = None, **example_kwargs) -> CompileReport:
    """Compile `model` for one call on the example inputs and report what fused and what did not.

    Like `torch._dynamo.explain`, this resets Dynamo's caches before and after, so other compiled functions
    recompile on their next call.
    """
    reports: list[CompileReport] = []
    backend = make_backend(CompileConfig.from_options(options), reports.append)
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            torch.compile(model, backend=backend, dynamic=False)(*example_args, **example_kwargs)
    finally:
        torch._dynamo.reset()
    if not reports:
        raise RuntimeError("Dynamo produced no graph for this model call; nothing was compiled")
    return _merged(reports)


class CompiledModel:
    """A model compiled in place with the "trtllm" backend; `reports` has one entry per compiled graph."""

    def __init__(self, model: torch.nn.Module, config: CompileConfig):
        self.model = model
        self.config = config
        self.reports: list[CompileReport] = []
        model.compile(backend=make_backend(config, self.reports.append))

    @property
    def report(self) -> CompileReport:
        return _merged(self.reports)

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.model.generate(*args, **kwargs)


def compile(model: torch.nn.Module, **options) -> CompiledModel:  # noqa: A001  (mirrors torch.compile)
    """Compile `model` in place (like `nn.Module.compile`) with the "trtllm" backend."""
    return CompiledModel(model, CompileConfig.from_options(options))
