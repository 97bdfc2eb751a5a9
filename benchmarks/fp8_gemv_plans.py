"""Every one-row FP8 GEMV plan at the Llama-2-7B GEMMs, the same plans with x left unquantized, and bf16 beside them.

    PYTHONPATH=. python benchmarks/fp8_gemv_plans.py

Each plan is timed as the tuner times it (kernels/tuning.py: replayed from a CUDA graph after an L2 sweep), one
GEMM of one row a graph. "fp8": `kernels/gemv.FP8_CANDIDATES[1]` with x quantized in the kernel (the decode path
of `trtllm::fp8_linear`); "fp8, x unquantized": the fma plans over the same FP8 weight with a bf16 x, what the
quantization of x costs; "bf16": the bf16 one-row candidates (cuBLAS among them) over a bf16 weight. TB/s
counts the weight bytes.
"""

from __future__ import annotations

import torch

from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.kernels import gemv, tuning

SHAPES = layer_gemms("llama-2-7b")


def shape_times(n: int, k: int) -> dict[str, tuple[dict[str, float], int]]:
    """{weights kind: ({plan: us}, bytes a weight)} of one GEMM shape."""
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    y = torch.empty(1, n, device="cuda", dtype=torch.bfloat16)
    w_fp8 = (0.5 * torch.randn(n, k, device="cuda")).to(torch.float8_e4m3fn)
    w_bf16 = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    scales = gemv.Fp8Scales(torch.tensor(0.05, device="cuda"), torch.rand(n, device="cuda") + 0.5)
    fp8_plans = gemv.FP8_CANDIDATES[1]
    fma_plans = [plan for plan in fp8_plans if plan.path == "fma"]
    runs = {
        "fp8": (lambda plan: gemv._launch(x, w_fp8, None, y, plan, scales), fp8_plans, 1),
        "fp8, x unquantized": (lambda plan: gemv._launch(x, w_fp8, None, y, plan), fma_plans, 1),
        "bf16": (lambda plan: gemv._launch(x, w_bf16, None, y, plan), gemv.CANDIDATES[1], 2),
    }
    device = torch.device("cuda", torch.cuda.current_device())
    return {
        kind: (tuning.plan_times_us(("fp8_gemv_plans", kind, n, k, device), run, plans), size)
        for kind, (run, plans, size) in runs.items()
    }


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, one row")
    best: dict[str, float] = {}
    for name, (n, k) in SHAPES.items():
        print(f"\n{name} ({n} x {k}): | weights | plan | us | TB/s |")
        for kind, (times, itemsize) in shape_times(n, k).items():
            for plan, us in sorted(times.items(), key=lambda item: item[1]):
                print(f"| {kind} | {plan} | {us:.1f} | {n * k * itemsize / us / 1e6:.2f} |")
            best[kind] = best.get(kind, 0.0) + min(times.values())
    print("\nbest plan per GEMM, summed over a layer (us):", {kind: round(us, 1) for kind, us in best.items()})


if __name__ == "__main__":
    main()
