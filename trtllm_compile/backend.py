"""The torch.compile backend "trtllm" (registered through the `torch_dynamo_backends` entry point).

Dynamo graph -> pre-dispatch ATen with frozen weights (capture) -> pass pipeline -> a graph of fused ops that
runs their reference implementations on CPU and our kernels on CUDA.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
import torch.fx

from trtllm_compile import ops  # noqa: F401  (registers the trtllm ops)
from trtllm_compile.capture import CapturedGraph, capture_dynamo_graph
from trtllm_compile.config import CompileConfig
from trtllm_compile.passes import GRAPH_STAGES, run_passes
from trtllm_compile.report import CompileReport

logger = logging.getLogger(__name__)

ReportSink = Callable[[CompileReport], None]


class CompiledGraph:
    """What the backend hands back to Dynamo: the optimized graph, callable with Dynamo's inputs."""

    def __init__(self, captured: CapturedGraph, report: CompileReport):
        self.captured = captured
        self.report = report

    @property
    def graph_module(self) -> torch.fx.GraphModule:
        return self.captured.graph_module

    def __call__(self, *args):
        return self.captured(*args)


def compile_graph(gm: torch.fx.GraphModule, example_inputs: list, config: CompileConfig) -> CompiledGraph:
    start = time.perf_counter()
    captured = capture_dynamo_graph(gm, example_inputs)
    results = run_passes(captured.graph_module, config, GRAPH_STAGES, skip=config.disable_passes)
    report = CompileReport.from_graph(captured.graph_module, results)
    logger.info("trtllm: compiled a graph in %.1fs: %s", time.perf_counter() - start, report.summary())
    logger.debug("%s", report)
    if any(isinstance(x, torch.Tensor) and x.is_cuda for x in example_inputs):
        from trtllm_compile.kernels import register_cuda_kernels

        register_cuda_kernels()
    return CompiledGraph(captured, report)


def make_backend(config: CompileConfig | None = None, report_sink: ReportSink | None = None):
    """A backend callable that compiles with `config` and hands each graph's report to `report_sink`."""
    config = config or CompileConfig()

    def backend(gm: torch.fx.GraphModule, example_inputs: list, **_):
        compiled = compile_graph(gm, example_inputs, config)
        if report_sink is not None:
            report_sink(compiled.report)
        _record(compiled.report)
        return compiled

    return backend


_LAST_REPORTS: list[CompileReport] = []


def _record(report: CompileReport) -> None:
    _LAST_REPORTS.append(report)
    del _LAST_REPORTS[:-64]


def last_report() -> CompileReport | None:
    """The report of the most recent graph compiled by the "trtllm" backend in this process."""
    return _LAST_REPORTS[-1] if _LAST_REPORTS else None


def trtllm_backend(gm: torch.fx.GraphModule, example_inputs: list, options: dict | None = None):
    """`torch.compile(model, backend="trtllm", options={...})`; options are `CompileConfig` fields."""
    return make_backend(CompileConfig.from_options(options))(gm, example_inputs)
