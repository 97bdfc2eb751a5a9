"""Per-shape plans of the decode kernels (kernels/gemv.py, kernels/int4_gemv.py, kernels/paged_attention.py), timed
the way decode runs.

A key (row bucket, shape, dtypes, ..., device) times its candidate plans once, each replayed from a CUDA graph
after an L2 sweep, and keeps the fastest; later calls find it in `plans` without touching the host's clock or
the device, so they are CUDA-graph capturable. Not triton.autotune (nor the shared `autotune` helper): a plan
can span two kernels (a split-K reduce) or leave Triton (cuBLAS), and its launcher sizes the workspace.
"""

from __future__ import annotations

import logging
import os
import statistics
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

from trtllm_compile.kernels import plans_fixed

logger = logging.getLogger(__name__)

_L2_SWEEP_BYTES = 256 << 20  # larger than any GPU's L2: read before each timed run of a plan
P = TypeVar("P", bound=Hashable)

plans: dict[tuple, Hashable] = {}  # key -> the plan chosen for it
tuning_log: dict[tuple, dict[str, float]] = {}  # key -> {plan: median ms}, for benchmarks and debugging


def _graph_ms(fn, device: torch.device, reps: int = 20) -> float:
    """Median ms of `fn` replayed from a CUDA graph right after a 256 MiB read sweeps L2: how a decode step's
    GEMMs run (weights not cached, the cache holding clean lines). triton's do_bench zeroes its flush buffer
    instead, and writing those dirty lines back inside the timed kernel cost cuBLAS and the dot path 6-11 us
    but the fma path (whose loads are evict-first) 3 us on an H200, which misranked them."""
    fn()  # compile and allocate outside the capture
    sweep = torch.empty(_L2_SWEEP_BYTES, dtype=torch.uint8, device=device)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        sweep.amax()  # reads every byte into a one-byte result (a sum would promote it to a 2 GiB int64 copy)
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _bench_ms(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20, return_mode="median")


def _tune(key: tuple, run: Callable[[P], object], candidates: Sequence[P]) -> P:
    """The fastest of `candidates` for `key` (whose last item is the device); `run(plan)` launches one."""
    # A plan that cannot be captured is no use to decode's CUDA graphs; eager timing only if none can be.
    for timer in (lambda fn: _graph_ms(fn, key[-1]), _bench_ms):
        times = {}
        for plan in candidates:
            try:
                times[plan] = timer(lambda plan=plan: run(plan))
            except torch.OutOfMemoryError as error:  # no plan would run either: say so, not "no plan ran"
                raise torch.OutOfMemoryError(
                    f"out of GPU memory while timing the plans of {key} (their outputs, workspaces and a 256 MiB "
                    "L2 sweep): leave more room beside the KV cache (a lower gpu_memory_fraction, or num_blocks)"
                ) from error
            except Exception as error:  # a tile that does not fit this GPU (shared memory, registers): skip it
                logger.debug("plan %s failed for %s: %s", plan, key, error)
        if times:
            break
    else:
        raise RuntimeError(f"no plan ran for {key}; see the debug log of {__name__}")
    best = min(times, key=times.get)
    tuning_log[key] = {str(p): t for p, t in times.items()}
    logger.info("%s: %s (%.1f us)", key, best, 1e3 * times[best])
    return best


def plan_times_us(key: tuple, run: Callable[[P], object], candidates: Sequence[P]) -> dict[str, float]:
    """{plan: us} of each of `candidates` that runs, timed as `cached_plan` times them (for benchmarks; `key`'s
    last item is the device). Nothing is cached for later calls."""
    _tune(key, run, candidates)
    return {plan: 1e3 * ms for plan, ms in tuning_log[key].items()}


def chosen_plans() -> list[dict]:
    """Each key tuned in this process (without its device), the plan chosen and every candidate's time in us: what
    `bench --out` records, so that two runs' picks can be compared where their figures differ."""
    return [
        {
            "key": [str(part) for part in key[:-1]],
            "plan": str(plan),
            "us": {name: round(1e3 * ms, 2) for name, ms in tuning_log.get(key, {}).items()},
        }
        for key, plan in plans.items()
    ]


def cached_plan(key: tuple, candidates: Sequence[P], run: Callable[[P], object]) -> P:
    """The plan cached for `key` (a tuple ending with the device). The first call times `candidates` (`run(plan)`
    launches one) unless tuning is off (TRTLLM_TRITON_AUTOTUNE=0, `kernels.fixed_plans()`, a device other than
    CUDA: Triton's interpreter, or inside a CUDA-graph capture): then the first candidate, the default."""
    if plans_fixed():
        return candidates[0]
    plan = plans.get(key)
    if plan is not None:
        return plan
    if key[-1].type != "cuda" or os.environ.get("TRTLLM_TRITON_AUTOTUNE", "1") == "0":
        return candidates[0]
    if torch.cuda.is_current_stream_capturing():
        logger.warning("%s first seen inside a CUDA-graph capture: default plan, untuned", key[:-1])
        return candidates[0]
    plan = plans[key] = _tune(key, run, candidates)
    return plan
