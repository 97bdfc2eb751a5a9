"""cuBLAS against cuBLASLt, on x as it is and padded, for a Llama-2-7B decode step's GEMMs, by rows of the batch.

    PYTHONPATH=. python benchmarks/blas_rows.py [--rows 256,320,368,384,400,416,432,448,512,640,768]

Each GEMM (bf16, random weights) runs every plan of `kernels.gemv.BLAS_CANDIDATES` (each library, with x as it is
and padded by `BLAS_PAD_ROWS` rows), timed as the tuner times plans (`kernels.tuning._graph_ms`: replayed from a CUDA
graph after a 256 MiB read sweeps L2). Prints each GEMM's fastest plan and microseconds, and the step's sum (32
layers and the LM head) in cuBLAS, in cuBLASLt, with the faster library of each GEMM (docs/benchmarks.md run 91), and
with the fastest plan of each GEMM, which is what `kernels.gemv.linear` runs past 16 rows.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.kernels import gemv
from trtllm_compile.kernels.tuning import _graph_ms

GEMMS = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
LM_HEAD, LAYERS = (32000, 4096), 32


def time_us(rows: int, weight: torch.Tensor, plan: gemv.Plan) -> float:
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return 1e3 * _graph_ms(lambda: gemv.gemv(x, weight, plan=plan), weight.device)


def step_ms(us_by_gemm: dict[str, float]) -> float:
    """A decode step's GEMM time: every layer's GEMMs and the LM head once."""
    return sum(us * (1 if name == "lm_head" else LAYERS) for name, us in us_by_gemm.items()) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="256,320,368,384,400,416,432,448,512,640,768")
    args = parser.parse_args()
    shapes = {**GEMMS, "lm_head": LM_HEAD}
    weights = {name: torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / 64 for name, (n, k) in shapes.items()}
    sums = "cublas/cublaslt/faster library/fastest plan"
    print(torch.cuda.get_device_name())
    print(f"| rows | {' | '.join(f'{name}: fastest plan, us' for name in shapes)} | step ms ({sums}) |")
    print("| ---: " * (len(shapes) + 2) + "|")
    for rows in (int(r) for r in args.rows.split(",")):
        times = {name: {str(p): time_us(rows, w, p) for p in gemv.BLAS_CANDIDATES} for name, w in weights.items()}
        fastest = {name: min(t, key=t.get) for name, t in times.items()}
        cells = [f"{fastest[name]} {t[fastest[name]]:.1f}" for name, t in times.items()]
        step = [step_ms({name: t[lib] for name, t in times.items()}) for lib in gemv.BLAS_PATHS]
        step.append(step_ms({name: min(t[lib] for lib in gemv.BLAS_PATHS) for name, t in times.items()}))
        step.append(step_ms({name: min(t.values()) for name, t in times.items()}))
        print(f"| {rows} | {' | '.join(cells)} | {'/'.join(f'{s:.2f}' for s in step)} |", flush=True)


if __name__ == "__main__":
    main()
