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
    """A compiled model: calls run the model compiled in place with the "trtllm" backend; `generate()` runs on
    the paged-KV in-flight batching engine (built on first use) and takes Hugging Face's arguments."""

    def __init__(self, model: torch.nn.Module, config: CompileConfig, engine_options: dict):
        self.model = model
        self.config = config
        self.reports: list[CompileReport] = []
        self._engine_options = engine_options
        self._engine = None
        model.compile(backend=make_backend(config, self.reports.append))

    @property
    def report(self) -> CompileReport:
        """Reports of the forward graphs compiled so far, and of the generation step graph once built."""
        reports = self.reports + ([self._engine.report] if self._engine is not None else [])
        return _merged(reports)

    @property
    def engine(self):
        if self._engine is None:
            from trtllm_compile.runtime.engine import EngineConfig, LLMEngine

            self._engine = LLMEngine(self.model, None, EngineConfig(compile=self.config, **self._engine_options))
        return self._engine

    def __call__(self, *args, **kwargs):
        with torch.no_grad():
            return self.model(*args, **kwargs)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Hugging Face `generate()` arguments and output layout (greedy, sampling, eos, streamer, ...)."""
        from trtllm_compile.runtime.hf_generate import generate

        with torch.no_grad():
            return generate(self.engine, self.model.generation_config, input_ids, attention_mask, **kwargs)


_ENGINE_OPTIONS = ("max_batch_size", "max_num_tokens", "block_size", "num_blocks", "gpu_memory_fraction", "cuda_graphs")


def compile(model: torch.nn.Module, **options) -> CompiledModel:  # noqa: A001  (mirrors torch.compile)
    """Compile `model`: in place for calls (like `nn.Module.compile`), on the trtllm engine for `generate()`.

    Options are `CompileConfig` fields and the engine's (`max_batch_size`, `max_num_tokens`, `block_size`,
    `num_blocks`, `gpu_memory_fraction`, `cuda_graphs`).
    """
    engine_options = {name: options.pop(name) for name in _ENGINE_OPTIONS if name in options}
    return CompiledModel(model, CompileConfig.from_options(options), engine_options)
