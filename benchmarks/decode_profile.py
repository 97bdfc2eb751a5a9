"""Where the time of one decode step goes: host overhead around the CUDA graph, and a kernel breakdown.

    PYTHONPATH=. python benchmarks/decode_profile.py [--config llama-2-7b|...|default] [--num-layers N]
        [--batch 1] [--context 256] [--steps 20] [--profile-steps 5] [--dtype bfloat16] [--device cuda]
        [--quantization fp8|int8_sq|int4_awq|...] [--kv-cache fp8] [--prefill] [--out FILE.json] [--trace FILE.json]

`--config`: a shape of bench/shapes.py (random weights made on the device) or "default" (the embedded model).
`--quantization` quantizes the step graph's GEMMs as `trtllm-compile bench --quantization` does (calibrated on
random tokens), `--kv-cache fp8` also its KV cache. `--batch` requests of `--context` random prompt tokens (seed 0)
are prefilled and decoded greedily until each has a few tokens (CUDA graph captured and warm). Then (1) the wall
time per step of `--steps` decode steps back to back, the median GPU time of the captured graph's replay alone
(CUDA events) and their difference, the host gap (scheduling, input copies, sampling, detokenizing that overlap
scheduling does not hide); (2) `--profile-steps` decode steps with CUDA graphs off under torch.profiler: each
device kernel's calls and microseconds per step (top 25), and sums by category. On CPU there are no graphs nor
kernels: the tables hold the CPU self time of the ops instead. With `--prefill`, (3) the running requests are
aborted and a new batch of the same prompts is prefilled: the wall time of that step (run eagerly, without the
prefill graph one prompt alone would replay) against the sum of its kernels, and their breakdown, and the Python
functions of a fourth by their own time (cProfile): where a host-bound prefill's time goes above the aten ops.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import math
import pstats
import re
import time
from collections.abc import Callable

import torch

from trtllm_compile.bench import measure
from trtllm_compile.bench.cli import WEIGHT_FORMATS, format_config, random_calibration
from trtllm_compile.bench.shapes import SHAPES, random_model
from trtllm_compile.kernels import tuning
from trtllm_compile.models import load_model
from trtllm_compile.quantization.config import KV_CACHE_FORMATS
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.model_runner import next_bucket
from trtllm_compile.runtime.sampling import SamplingParams

WARM_TOKENS = 3  # decoded tokens per request before timing: the graph of this batch is captured and replayed
EAGER_WARM_STEPS = 2  # unprofiled eager steps first: autotuning or recompiles for unpadded shapes stay out
TOP_ROWS = 25
# Ordered: the first pattern that matches a kernel (case-insensitive) names its category.
CATEGORIES = [
    ("GEMM", r"gemv|gemm|cublas|sm90|nvjet|cutlass|xmma|split_?k|matmul|linear|aten::(mm|addmm|bmm)\b"),
    ("attention", r"paged|attention|attn|flash|sdpa"),
    ("norm", r"norm"),
    ("rope", r"rope|rotary"),
    ("sampling", r"argmax|topk|sort|multinomial"),
    ("activation", r"silu|gelu|act|mul"),
    ("copies", r"copy|fill|cat|index|scatter|gather|memcpy|memset|clone|contiguous"),
    ("other", r""),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="llama-2-7b", choices=[*SHAPES, "default"])
    parser.add_argument("--num-layers", type=int, default=None, help="cut a shape to N layers (not default)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--context", type=int, default=256, help="prompt tokens per request")
    parser.add_argument("--steps", type=int, default=20, help="timed decode steps (and graph replays)")
    parser.add_argument("--profile-steps", type=int, default=5, help="decode steps under the profiler")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quantization", default="none", choices=WEIGHT_FORMATS, help="GEMM weight format")
    parser.add_argument("--kv-cache", choices=KV_CACHE_FORMATS, help="KV cache format (default: the model dtype)")
    parser.add_argument("--prefill", action="store_true", help="also profile a prefill step of the batch")
    parser.add_argument("--out", default=None, help="write the figures as JSON")
    parser.add_argument("--trace", default=None, help="write the profiler's Chrome trace")
    return parser.parse_args(argv)


def build(args: argparse.Namespace, device: torch.device) -> tuple[LLM, list[list[int]]]:
    """The LLM with the batch's requests queued, and their prompts. The KV cache holds just them: 7B leaves room
    for the profiler."""
    dtype = getattr(torch, args.dtype)
    if args.config == "default":
        model, tokenizer = load_model(None, dtype=dtype, device=device)
    else:
        model, tokenizer = random_model(args.config, dtype, device, args.num_layers), None
    prefill_steps = math.ceil(args.batch * args.context / 2048)  # at most; max_num_tokens is >= 2048
    max_tokens = prefill_steps + WARM_TOKENS + args.steps + EAGER_WARM_STEPS + args.profile_steps + 16
    max_num_tokens = max(2048, args.context + max_tokens + 16)
    num_blocks = max(math.ceil(max_num_tokens / 16), args.batch * math.ceil((args.context + max_tokens) / 16)) + 1
    calibration = random_calibration(model, [args.quantization], args.kv_cache is not None)
    llm = LLM(
        model,
        tokenizer,
        device=device,
        compile=format_config(args.quantization, args.kv_cache, calibration),
        max_batch_size=args.batch,
        max_num_tokens=max_num_tokens,
        num_blocks=num_blocks,
        cuda_graphs=True,
    )
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(1, model.config.vocab_size, (args.batch, args.context), generator=generator).tolist()
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    for prompt in prompts:
        llm.engine.add_request(prompt, params)
    return llm, prompts


def warm_up(llm: LLM, batch: int) -> None:
    """Step until every request is decoding and has WARM_TOKENS tokens (prefill done, graph captured)."""
    engine = llm.engine
    for _ in range(10_000):
        outputs = engine.step()
        done = len(outputs) == batch and all(len(o.token_ids) >= WARM_TOKENS for o in outputs)
        if done and engine.scheduler.num_waiting == 0:
            return
    raise RuntimeError("requests never all reached the decode phase")


def time_steps(llm: LLM, device: torch.device, steps: int, batch: int) -> float:
    """Wall milliseconds per decode step, `steps` of them back to back as generation runs them (with overlap
    scheduling the host prepares step n+1 while the GPU runs step n); every request must advance."""
    measure.sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        outputs = llm.engine.step()
        if len(outputs) != batch or any(o.finished for o in outputs):
            print(f"warning: a timed step advanced {len(outputs)} of {batch} requests or finished one")
    measure.sync(device)
    return (time.perf_counter() - start) * 1e3 / steps


def replay_ms(llm: LLM, batch: int, steps: int) -> float | None:
    """Median GPU milliseconds of the captured graph of this batch's bucket; None without one (CPU, no triton).
    The replay rewrites the last step's K/V slots, fed the latest samples as its tokens: the tokens generated
    after it may change, not the cost of a step."""
    runner = llm.engine.runner
    graph = runner._graphs.get((next_bucket(runner.graph_sizes, batch), None))  # keys: (rows, prefill tokens)
    return measure.replay_ms(graph[0], steps) if graph is not None else None


@contextlib.contextmanager
def _eager(llm: LLM):
    """The engine's steps launched eagerly meanwhile (graphs hide their kernels from the profiler); graphs come
    back on after."""
    runner = llm.engine.runner
    saved = runner.use_cuda_graphs
    runner.use_cuda_graphs = False
    try:
        yield
    finally:
        runner.use_cuda_graphs = saved


def profile(llm: LLM, device: torch.device, steps: int, trace: str | None):
    """Profile `steps` eager decode steps."""
    with _eager(llm):
        for _ in range(EAGER_WARM_STEPS):
            llm.engine.step()
        measure.sync(device)
        with _profiler(device.type == "cuda") as prof:
            for _ in range(steps):
                llm.engine.step()
            measure.sync(device)
    if trace:
        prof.export_chrome_trace(trace)
    return prof


def _profiler(gpu: bool) -> torch.profiler.profile:
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gpu else [])
    return torch.profiler.profile(activities=activities)


def prefill(llm: LLM, prompts: list[list[int]], device: torch.device) -> dict:
    """Abort the running requests, then time the step that prefills `prompts` (the second of two such steps:
    the first tunes its shapes) and profile a third: wall milliseconds, its kernels, and the host's busiest
    ops by self CPU time. The step runs eagerly, as a step of several prompts does (one prompt alone would replay
    a prefill graph), so its host time is on the critical path."""
    with _eager(llm):
        return _prefill(llm, prompts, device)


def _prefill(llm: LLM, prompts: list[list[int]], device: torch.device) -> dict:
    engine = llm.engine
    for request_id in list(engine._requests):
        engine.abort(request_id)
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)

    def step(stop_profiling: Callable[[], object] | None = None) -> float:
        for prompt in prompts:
            engine.add_request(prompt, params)
        measure.sync(device)
        start = time.perf_counter()
        engine.step()
        measure.sync(device)
        wall_ms = (time.perf_counter() - start) * 1e3
        if stop_profiling is not None:
            stop_profiling()
        while engine.has_unfinished():
            engine.step()
        return wall_ms

    step()
    wall_ms = step()
    prof = _profiler(device.type == "cuda")
    prof.start()
    step(prof.stop)
    rows, source = kernel_rows(prof, 1)
    kernels_ms = sum(r["us"] for r in rows) / 1e3
    shape = f"{len(prompts)} x {len(prompts[0])}"
    print(f"\nprefill step of {shape} tokens: wall {wall_ms:.2f} ms, kernels {kernels_ms:.2f} ms")
    categories = categorize(rows)
    print_tables(rows, categories, source, "prefill step")
    host_ops = host_rows(prof)
    print(f"\n{'host op (self CPU time, profiled step)':<62}{'calls':>11}{'us':>11}")
    for row in host_ops[:TOP_ROWS]:
        print(f"{row['name'][:60]:<62}{row['calls']:>11.0f}{row['us']:>11.1f}")
    python = cProfile.Profile()
    python.enable()
    step(python.disable)
    functions = python_rows(python)
    print(f"\n{'Python function (own time, profiled step)':<62}{'calls':>11}{'us':>11}")
    for row in functions[:TOP_ROWS]:
        print(f"{row['name'][-60:]:<62}{row['calls']:>11.0f}{row['us']:>11.1f}")
    return {
        "wall_ms": wall_ms,
        "kernels_ms": kernels_ms,
        "kernels": rows,
        "categories": categories,
        "host": host_ops,
        "python": functions,
    }


def python_rows(profile: cProfile.Profile) -> list[dict]:
    """[{name, calls, us}] of the profiled Python functions (file:line(name)) by their own time, largest first."""
    stats = pstats.Stats(profile).stats
    rows = [
        {"name": f"{'/'.join(file.split('/')[-2:])}:{line}({name})", "calls": calls, "us": own * 1e6}
        for (file, line, name), (_, calls, own, _, _) in stats.items()
        if own > 0
    ]
    return sorted(rows, key=lambda r: -r["us"])


def host_rows(prof) -> list[dict]:
    """[{name, calls, us}] of the host's ops by self CPU time, largest first."""
    rows = [
        {"name": e.key, "calls": e.count, "us": float(e.self_cpu_time_total)}
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    ]
    return sorted(rows, key=lambda r: -r["us"])


def _device_us(event) -> float:
    if hasattr(event, "self_device_time_total"):
        return float(event.self_device_time_total)
    return float(getattr(event, "self_cuda_time_total", 0.0))  # older torch


def kernel_rows(prof, steps: int) -> tuple[list[dict], str]:
    """[{name, calls, us}] per step, largest first, and what the times are: device kernels, else CPU op self
    time. User annotations (record_function ranges, also mirrored on the GPU timeline) span other kernels; on the
    CPU they are the trtllm ops' bound bodies (ops.library), whose self time is the op's own."""
    events = prof.key_averages()
    cpu = torch.autograd.DeviceType.CPU
    device_events = [
        e
        for e in events
        if getattr(e, "device_type", cpu) != cpu and _device_us(e) > 0 and not getattr(e, "is_user_annotation", False)
    ]
    if device_events:
        rows, source = [(e, _device_us(e)) for e in device_events], "device kernel time"
    else:
        rows, source = [(e, float(e.self_cpu_time_total)) for e in events], "CPU self time of ops (no device kernels)"
    rows = [{"name": e.key, "calls": e.count / steps, "us": us / steps} for e, us in rows if us > 0]
    return sorted(rows, key=lambda r: -r["us"]), source


def categorize(rows: list[dict]) -> list[dict]:
    totals = {name: {"category": name, "kernels": 0, "calls": 0.0, "us": 0.0} for name, _ in CATEGORIES}
    for row in rows:
        name = next(n for n, pattern in CATEGORIES if re.search(pattern, row["name"], re.IGNORECASE))
        totals[name]["kernels"] += 1
        totals[name]["calls"] += row["calls"]
        totals[name]["us"] += row["us"]
    return list(totals.values())


def print_tables(rows: list[dict], categories: list[dict], source: str, what: str = "decode step") -> None:
    total = sum(r["us"] for r in rows) or 1.0
    print(f"\nper {what}, {source}, CUDA graphs off:")
    print(f"{'kernel':<62}{'calls/step':>11}{'us/step':>11}{'%':>7}")
    for row in rows[:TOP_ROWS]:
        name = row["name"].removeprefix("void ").replace("at::native::", "")  # room for the telling part
        name = name if len(name) <= 60 else name[:57] + "..."
        print(f"{name:<62}{row['calls']:>11.1f}{row['us']:>11.1f}{100 * row['us'] / total:>7.1f}")
    calls = sum(r["calls"] for r in rows)
    print(f"total: {total:.1f} us/step in {calls:.0f} calls/step ({len(rows)} distinct names)")
    print(f"\n{'category':<14}{'calls/step':>11}{'us/step':>11}{'%':>7}")
    for cat in categories:
        print(f"{cat['category']:<14}{cat['calls']:>11.1f}{cat['us']:>11.1f}{100 * cat['us'] / total:>7.1f}")


def host_overhead(llm: LLM, args: argparse.Namespace, device: torch.device) -> dict:
    wall_ms = time_steps(llm, device, args.steps, args.batch)
    gpu_ms = None
    if device.type == "cuda":
        try:
            gpu_ms = replay_ms(llm, args.batch, args.steps)
        except RuntimeError as error:  # one run on the GPU: keep the wall figure and the kernel table
            print(f"warning: graph replay timing failed: {error}")
    host = {"wall_ms": wall_ms, "gpu_ms": gpu_ms, "host_gap_ms": None, "tokens_per_s": args.batch / wall_ms * 1e3}
    print(f"\ndecode step wall: {wall_ms:.3f} ms/step ({args.steps} back to back), {host['tokens_per_s']:.1f} tokens/s")
    if gpu_ms is None:
        print("graph replay: none (CUDA graphs are CUDA-only, and need triton): no GPU/host split")
    else:
        host["host_gap_ms"] = wall_ms - gpu_ms
        print(f"graph replay GPU: {gpu_ms:.3f} ms/step; host gap: {wall_ms - gpu_ms:.3f} ms/step")
    return host


def breakdown(llm: LLM, args: argparse.Namespace, device: torch.device) -> tuple[list[dict], list[dict], str]:
    try:
        prof = profile(llm, device, args.profile_steps, args.trace)
        rows, source = kernel_rows(prof, args.profile_steps)
    except Exception as error:  # one run on the GPU: the host figures still get written
        print(f"warning: profiling failed: {type(error).__name__}: {error}")
        return [], categorize([]), f"profiling failed: {error}"
    categories = categorize(rows)
    print_tables(rows, categories, source)
    return rows, categories, source


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    weights = f"{args.dtype}, {args.quantization} (kv {args.kv_cache})"
    print(f"{name}, torch {torch.__version__}; {args.config}, {weights}, batch {args.batch}, context {args.context}")
    llm, prompts = build(args, device)
    try:
        warm_up(llm, args.batch)
        host = host_overhead(llm, args, device)
        rows, categories, source = breakdown(llm, args, device)
        prefill_step = prefill(llm, prompts, device) if args.prefill else None
    finally:
        llm.close()
    if host["gpu_ms"] is not None and rows:  # the eager sum also holds input copies and sampling, outside the graph
        eager_us = sum(r["us"] for r in rows)
        print(f"eager kernel sum {eager_us:.1f} us/step vs graph replay {host['gpu_ms'] * 1e3:.1f} us/step")
    result = {
        "args": vars(args),
        "device": name,
        "torch": torch.__version__,
        "host": host,
        "kernel_source": source,
        "kernels": rows,
        "categories": categories,
        "prefill": prefill_step,
        "tuned_plans": tuning.chosen_plans(),
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
