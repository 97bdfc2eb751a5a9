"""`trtllm-compile bench`, with the time Python's garbage collector took during each measured run of our engine.

    PYTHONPATH=. python benchmarks/gc_pauses.py [--freeze-before-runs] -- BENCH ARGUMENTS

Prints, for every measured run, its TPOT, TTFT and total, the milliseconds and number of collections of each
generation, the objects frozen (`gc.get_freeze_count()`) when it ended, and the objects the collector tracks.
`--freeze-before-runs` collects and freezes the whole heap before each run (the reference: no collection can walk
the objects that were there before). The engine itself freezes that heap during every step (runtime/engine.py).
"""

from __future__ import annotations

import argparse
import gc
import time

from trtllm_compile.bench import measure
from trtllm_compile.cli import main as cli_main


class CollectionClock:
    """Milliseconds and count of the collector's collections, by generation (gc.callbacks)."""

    def __init__(self):
        self.reset()
        self._started = 0.0
        gc.callbacks.append(self._on_collection)

    def reset(self) -> None:
        self.ms, self.count = [0.0, 0.0, 0.0], [0, 0, 0]

    def _on_collection(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.ms[info["generation"]] += 1e3 * (time.perf_counter() - self._started)
        self.count[info["generation"]] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--freeze-before-runs", action="store_true")
    parser.add_argument("bench_args", nargs=argparse.REMAINDER, help="after --: the arguments of `bench`")
    args = parser.parse_args()
    clock, engine_run = CollectionClock(), measure._engine_run

    def timed_run(*run_args, **run_kwargs):
        if args.freeze_before_runs:
            gc.collect()
            gc.freeze()
        clock.reset()
        result = engine_run(*run_args, **run_kwargs)
        print(
            f"run at batch {result.batch_size}: TPOT {result.tpot_ms:.2f} ms, TTFT {result.ttft_ms:.0f} ms, total "
            f"{result.seconds:.3f} s; collections by generation: ms {[round(ms, 1) for ms in clock.ms]}, count "
            f"{clock.count}; frozen {gc.get_freeze_count()}, tracked {len(gc.get_objects())}",
            flush=True,
        )
        return result

    measure._engine_run = timed_run
    bench_args = [a for a in args.bench_args if a != "--"]
    cli_main(["bench", *bench_args])


if __name__ == "__main__":
    main()
