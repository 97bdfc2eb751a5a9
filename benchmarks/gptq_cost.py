"""What GPTQ costs on the module path (`calibrate` then `quantize`): time and peak memory, one pass against layer
by layer.

    PYTHONPATH=. python benchmarks/gptq_cost.py [--config llama-2-7b] [--dtype bfloat16] [--format int4_gptq]
        [--modes one-pass,by-layer] [--windows 4] [--window 128]

"one-pass" calibrates with grams=True (every linear input's Gram matrix summed at once, on the float model) and
rounds on them; "by-layer" calibrates without and lets `quantize` sum one decoder layer's matrices at a time on the
model quantized up to it (a pass over the calibration windows per layer). Each mode starts from a fresh model of
random weights (std 0.02, as `bench --config`) and random calibration tokens; on a GPU the peak is the CUDA
allocator's over calibration plus rounding, the model's own weights included.
"""

from __future__ import annotations

import argparse
import time

import torch

from trtllm_compile.bench.shapes import random_model
from trtllm_compile.quantization import calibrate, quantize

MODES = ("one-pass", "by-layer")


def measure(model: torch.nn.Module, fmt: str, mode: str, windows: torch.Tensor) -> dict[str, float | None]:
    """Quantize `model` in place to `fmt` with GPTQ in `mode` on the token `windows`; seconds of calibration and of
    rounding, and the peak CUDA memory in GiB (None on the CPU)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
    cuda = next(model.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    calibration = calibrate(model, windows=windows, samples=0, grams=mode == "one-pass", kv_cache=False, progress=False)
    calibrated = time.perf_counter()
    quantize(model, fmt, calibration=calibration, rounding="gptq", progress=True)
    if cuda:
        torch.cuda.synchronize()
    done = time.perf_counter()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return {"calibrate_s": calibrated - start, "quantize_s": done - calibrated, "peak_gib": peak}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="llama-2-7b", help="a shape of `bench --config`")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--format", default="int4_gptq", help="a format GPTQ rounds (int4_gptq, fp8, int8_sq)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--layers", type=int, help="cut the model to this many decoder layers")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for mode in args.modes.split(","):
        model = random_model(args.config, getattr(torch, args.dtype), device, args.layers)
        generator = torch.Generator().manual_seed(0)
        windows = torch.randint(1, model.config.vocab_size, (args.windows, args.window), generator=generator)
        results[mode] = measure(model, args.format, mode, windows)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"{args.config} {args.dtype} -> {args.format}, {args.windows} x {args.window} calibration tokens, {device}")
    print("| mode | calibrate s | quantize s | peak GiB |\n| --- | ---: | ---: | ---: |")
    for mode, r in results.items():
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "-"
        print(f"| {mode} | {r['calibrate_s']:.1f} | {r['quantize_s']:.1f} | {peak} |")
    return results


if __name__ == "__main__":
    main()
