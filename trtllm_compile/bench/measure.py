"""Timing of one system at one batch size: a warm-up run, then `repeat` measured ones, reported by their medians.

One run is not enough to decide a bar: the same step of the same code moved by 10-40 us between calls on an H100
(docs/benchmarks.md runs 72-75), about 2% of a batch-1 INT4 TPOT. Each figure is the median of the repeats, and
every run's TPOT is kept (`tpot_ms_runs`) for the spread.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

logger = logging.getLogger(__name__)


@dataclass
class Measurement:
    system: str
    batch_size: int
    input_len: int
    output_len: int
    seconds: float
    ttft_ms: float
    tpot_ms: float
    tpot_ms_runs: list[float] = field(default_factory=list)  # each measured run's TPOT (tpot_ms: their median)

    @property
    def tokens_per_s(self) -> float:
        return self.batch_size * self.output_len / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens_per_s": self.tokens_per_s}


def median_of(runs: list[Measurement]) -> Measurement:
    """One measurement of repeated runs of a system and batch: the median of each figure, every run's TPOT."""
    if not runs:
        raise ValueError("no runs to take the median of")

    def median(figure: str) -> float:
        return statistics.median(getattr(run, figure) for run in runs)

    tpots = [run.tpot_ms for run in runs]
    return replace(
        runs[0], seconds=median("seconds"), ttft_ms=median("ttft_ms"), tpot_ms=median("tpot_ms"), tpot_ms_runs=tpots
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def cuda_graph_us(step: Callable[[], object], calls: int, replays: int = 20) -> float:
    """Median GPU microseconds per call of a microbenchmark: `step` makes `calls` calls. It runs once eagerly
    (compilation, autotuning, allocation), is captured in a CUDA graph, and the graph is replayed (no Python
    launch cost in the figure)."""
    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    graph.replay()
    return replay_ms(graph, replays) * 1e3 / calls


def replay_ms(graph: torch.cuda.CUDAGraph, replays: int = 20) -> float:
    """Median GPU milliseconds of one replay of a captured graph (CUDA events, each replay timed alone)."""
    return launch_ms(graph.replay, replays)


def launch_ms(launch: Callable[[], object], repeats: int = 20) -> float:
    """Median GPU milliseconds from the start to the end of the work one call of `launch` queues (CUDA events on
    the current stream; each call timed alone, after the previous one has finished)."""
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def gpu_us(fn: Callable, arg_sets: list[tuple], replays: int = 20) -> float:
    """Median GPU microseconds per call of `fn` over every argument set, from one CUDA graph of them all."""

    def step() -> None:
        for args in arg_sets:
            fn(*args)

    return cuda_graph_us(step, len(arg_sets), replays)


def measure_hf(system: str, model, prompts: torch.Tensor, output_len: int, repeat: int = 1) -> Measurement:
    """HF generate on a [batch, input_len] prompt tensor, greedy, exactly `output_len` new tokens; `repeat` runs."""
    device = prompts.device

    def generate(n: int):
        with torch.no_grad():
            model.generate(
                prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, min_new_tokens=n, do_sample=False
            )

    generate(output_len)  # warm-up (for torch.compile: the compilation)
    batch, input_len = prompts.shape
    runs = []
    for _ in range(repeat):
        first = _timed(lambda: generate(1), device)
        total = _timed(lambda: generate(output_len), device)
        tpot = (total - first) / max(output_len - 1, 1) * 1e3
        runs.append(Measurement(system, batch, input_len, output_len, total, first * 1e3, tpot))
    return median_of(runs)


PEERS = ("eager", "inductor")


def measure_peer(name: str, model, prompts: torch.Tensor, output_len: int, repeat: int = 1) -> Measurement:
    """A peer of `--compare`: "eager" (HF generate) or "inductor" (HF generate with a static cache, which HF
    compiles with inductor and CUDA graphs)."""
    if name not in PEERS:
        raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
    if name == "eager":
        return measure_hf("hf-eager", model, prompts, output_len, repeat)
    model.generation_config.cache_implementation = "static"
    try:
        return measure_hf("hf-static+inductor", model, prompts, output_len, repeat)
    finally:
        model.generation_config.cache_implementation = None
        torch._dynamo.reset()


def measure_engine(llm, prompts: torch.Tensor, output_len: int, system: str = "trtllm", repeat: int = 1) -> Measurement:
    """Our engine: all prompts submitted at once, batched in flight; `repeat` runs after a warm-up."""
    from trtllm_compile.runtime.sampling import SamplingParams

    rows = prompts.tolist()
    params = SamplingParams(max_tokens=output_len, temperature=0.0, ignore_eos=True)
    llm.generate(rows, params)  # warm-up: autotuning, CUDA graph capture
    return median_of([_engine_run(llm, prompts, params, system) for _ in range(repeat)])


def _engine_run(llm, prompts: torch.Tensor, params, system: str) -> Measurement:
    device, rows, output_len = prompts.device, prompts.tolist(), params.max_tokens
    engine = llm.engine
    sync(device)
    start = time.perf_counter()
    for row in rows:
        engine.add_request(row, params)
    first_token_at, finished = None, 0
    while finished < len(rows):
        outputs = engine.step()
        # Outputs hold tokens read back to the host: every prompt has its first token once none waits
        if first_token_at is None and outputs and all(len(o.token_ids) >= 1 for o in outputs):
            if engine.scheduler.num_waiting == 0:
                first_token_at = time.perf_counter()
        finished += sum(o.finished for o in outputs)
    sync(device)
    total = time.perf_counter() - start
    ttft = (first_token_at or start) - start
    batch, input_len = prompts.shape
    return Measurement(
        system, batch, input_len, output_len, total, ttft * 1e3, (total - ttft) / max(output_len - 1, 1) * 1e3
    )
