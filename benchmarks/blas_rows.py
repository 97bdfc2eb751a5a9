"""cuBLAS against cuBLASLt for a Llama-2-7B decode step's GEMMs, by rows of the batch.

    PYTHONPATH=. python benchmarks/blas_rows.py [--rows 256,320,368,384,400,416,432,448,512,640,768]

Each GEMM (bf16, random weights) is timed as the tuner times plans (`kernels.tuning._graph_ms`: replayed from a
CUDA graph after a 256 MiB read sweeps L2) in each library (`torch.backends.cuda.preferred_blas_library`). Prints
microseconds per GEMM and the step's sum (32 layers and the LM head) per library and with the faster of each GEMM,
which is what `kernels.gemv.linear` runs past 16 rows (docs/benchmarks.md run 91).
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.kernels.gemv import BLAS_CANDIDATES
from trtllm_compile.kernels.tuning import _graph_ms

GEMMS = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}
LM_HEAD, LAYERS = (32000, 4096), 32


def time_us(rows: int, weight: torch.Tensor, library: str) -> float:
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    out = torch.empty(rows, weight.shape[0], dtype=weight.dtype, device=weight.device)
    torch.backends.cuda.preferred_blas_library(library)
    try:
        return 1e3 * _graph_ms(lambda: torch.mm(x, weight.t(), out=out), weight.device)
    finally:
        torch.backends.cuda.preferred_blas_library("cublas")


def step_ms(us_by_gemm: dict[str, float]) -> float:
    """A decode step's GEMM time: every layer's GEMMs and the LM head once."""
    return sum(us * (1 if name == "lm_head" else LAYERS) for name, us in us_by_gemm.items()) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="256,320,368,384,400,416,432,448,512,640,768")
    args = parser.parse_args()
    shapes = {**GEMMS, "lm_head": LM_HEAD}
    weights = {name: torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / 64 for name, (n, k) in shapes.items()}
    libraries = [plan.path for plan in BLAS_CANDIDATES]
    both = "/".join(libraries)
    print(torch.cuda.get_device_name())
    print(f"| rows | {' | '.join(f'{name} us ({both})' for name in shapes)} | step ms ({both}/faster) |")
    print("| ---: " * (len(shapes) + 2) + "|")
    for rows in (int(r) for r in args.rows.split(",")):
        times = {name: {lib: time_us(rows, w, lib) for lib in libraries} for name, w in weights.items()}
        cells = ["/".join(f"{t[lib]:.1f}" for lib in libraries) for t in times.values()]
        sums = [step_ms({name: t[lib] for name, t in times.items()}) for lib in libraries]
        sums.append(step_ms({name: min(t.values()) for name, t in times.items()}))
        print(f"| {rows} | {' | '.join(cells)} | {'/'.join(f'{s:.2f}' for s in sums)} |", flush=True)


if __name__ == "__main__":
    main()
