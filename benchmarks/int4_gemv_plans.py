"""Every one-row INT4 weight-only GEMV plan at the Llama-2-7B GEMMs, with torch's tinygemm beside them.

    PYTHONPATH=. python benchmarks/int4_gemv_plans.py

Each plan is timed as the tuner times it (kernels/tuning.py: replayed from a CUDA graph after an L2 sweep), one
GEMM of one bf16 row a graph, over an AWQ-shaped weight (group 128, zero points). Plans: `kernels/int4_gemv`'s
one-row candidates (mma: int4_gemv_mma.cu on the tensor cores; hfma: fp16 math on CUDA cores; dot: tensor cores
from Triton; fma: fp32 CUDA-core math), and "tinygemm" (`ops.quant.int4_linear_tinygemm`, over its repacked copy
of the weight). TB/s counts the packed weight with its scales and zero points. Each path's result is also
compared with the op's reference.
"""

from __future__ import annotations

import math

import torch

from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.kernels import int4_gemv, tuning
from trtllm_compile.ops.quant import int4_linear_reference, int4_linear_tinygemm, pack_int4
from trtllm_compile.quantization.formats import int4_codes

SHAPES = layer_gemms("llama-2-7b")
GROUP = 128
TINYGEMM = "tinygemm"


def operands(n: int, k: int):
    codes, scales, zeros = int4_codes(torch.randn(n, k, device="cuda") / math.sqrt(k), GROUP, zero_point=True)
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    return x, pack_int4(codes), scales.to(torch.bfloat16), zeros.to(torch.bfloat16), GROUP, None


def run_plan(args, plan):
    if plan == TINYGEMM:
        return int4_linear_tinygemm(*args)
    return int4_gemv.int4_linear(*args, plan=plan)


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, one bf16 row, group {GROUP}")
    best: dict[str, float] = {}
    for name, (n, k) in SHAPES.items():
        args = operands(n, k)
        plans = [*int4_gemv.candidates(1, GROUP), TINYGEMM]
        key = ("int4_gemv_plans", name, torch.device("cuda", torch.cuda.current_device()))
        times = tuning.plan_times_us(key, lambda plan, args=args: run_plan(args, plan), plans)
        size = n * k // 2 + 2 * 2 * n * math.ceil(k / GROUP)  # codes, bf16 scales and zero points
        reference = int4_linear_reference(*args).float()
        print(f"\n{name} ({n} x {k}): | plan | us | TB/s | max abs error vs the reference |")
        for plan_name, us in sorted(times.items(), key=lambda item: item[1]):
            plan = next(p for p in plans if str(p) == plan_name)
            error = (run_plan(args, plan).float() - reference).abs().max().item()
            print(f"| {plan_name} | {us:.1f} | {size / us / 1e6:.2f} | {error:.2e} |")
        for path in ("hfma", "mma", "dot", "fma", TINYGEMM):
            path_us = [us for plan, us in times.items() if plan.startswith(path)]
            if path_us:
                best[path] = best.get(path, 0.0) + min(path_us)
    print("\nbest plan per GEMM and path, summed over a layer (us):", {p: round(us, 1) for p, us in best.items()})


if __name__ == "__main__":
    main()
