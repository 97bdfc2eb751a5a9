"""Skinny GEMMs of decode: cuBLAS `F.linear` against kernels/gemv.py at the Llama-2-7B shapes, M = 1..16 rows.

    PYTHONPATH=. python benchmarks/gemv_microbench.py [--out results.json]

us: median GPU time per GEMM of a CUDA graph that replays it over enough weight copies (each with its own x)
that the working set exceeds L2 (>= 256 MiB), so neither launch overhead nor L2 hits count: what a decode step
captured in a CUDA graph sees. TB/s counts the bytes a GEMM must move once (W, x and y) and is compared with a
device-to-device copy (read + write bytes) of 1 GiB measured in the same run. The per-layer rows sum
qkv + o + gate_up + down (the four GEMMs of one decoder layer after fuse_gemms), as in FACTS.md.
Ours is tuned (kernels/gemv.py's plan search, cuBLAS among the candidates) on the first call of each
(M bucket, N, K) before capture. "cuBLAS eager us": triton's do_bench of a plain call (L2 flushed, launch gaps
included), a second view of cuBLAS to set beside FACTS.md's GEMM table.
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from trtllm_compile.bench.measure import gpu_us
from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.kernels import gemv, tuning

L2_FLUSH_BYTES = 256 << 20
SHAPES = {**layer_gemms("llama-2-7b"), "lm_head": (32000, 4096)}  # Llama-2-7B, bf16: name -> (N, K) of the weight
LAYER = ("qkv", "o", "gate_up", "down")
KEYS = ("cublas_us", "ours_us")


def copy_rate_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6


def bench_shape(name: str, m: int, dtype: torch.dtype) -> dict:
    n, k = SHAPES[name]
    nbytes = (n * k + m * k + m * n) * dtype.itemsize
    copies = max(1, math.ceil(L2_FLUSH_BYTES / (n * k * dtype.itemsize)))
    arg_sets = [
        (torch.randn(m, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k))
        for _ in range(copies)
    ]
    x, w = arg_sets[0]
    torch.testing.assert_close(gemv.linear(x, w), F.linear(x, w), atol=2e-2, rtol=1.6e-2)
    cublas = gpu_us(F.linear, arg_sets)
    ours = gpu_us(gemv.linear, arg_sets)
    # Eager, L2 flushed (triton's do_bench): launch gaps included.
    cublas_eager = do_bench(lambda: F.linear(x, w), return_mode="median") * 1e3
    key = (gemv.row_bucket(m), n, k, dtype, w.dtype, dtype, x.device)  # as gemv.plan_for keys its plans
    plan = tuning.plans.get(key)
    return dict(
        shape=name, m=m, n=n, k=k, bytes=nbytes, cublas_us=cublas, ours_us=ours, plan=str(plan),
        cublas_eager_us=cublas_eager,
        tuning_ms={p: t for p, t in tuning.tuning_log.get(key, {}).items()},
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--out", help="write every measurement (and the plan search's timings) as JSON here")
    args = parser.parse_args()
    dtype = torch.bfloat16
    torch.manual_seed(0)
    copy = copy_rate_gbs()
    name = torch.cuda.get_device_name()
    print(f"device: {name}, torch {torch.__version__}, copy rate {copy:.0f} GB/s, bf16")
    print("| GEMM (N x K) | M | cuBLAS us | ours us | speedup | cuBLAS TB/s | ours TB/s | ours % of copy | plan |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    rows = []
    for shape in args.shapes:
        for m in args.rows:
            r = bench_shape(shape, m, dtype)
            rows.append(r)
            cublas_tbs, ours_tbs = r["bytes"] / r["cublas_us"] / 1e6, r["bytes"] / r["ours_us"] / 1e6
            print(
                f"| {shape} ({r['n']} x {r['k']}) | {m} | {r['cublas_us']:.1f} | {r['ours_us']:.1f} | "
                f"{r['cublas_us'] / r['ours_us']:.2f}x | {cublas_tbs:.2f} | {ours_tbs:.2f} | "
                f"{100 * ours_tbs * 1e3 / copy:.0f}% | {r['plan']} |",
                flush=True,
            )
            if args.out:  # after every row: a run cut short still leaves what it measured
                with open(args.out, "w") as f:
                    json.dump(dict(device=name, torch=torch.__version__, copy_gbs=copy, rows=rows), f, indent=1)
    if all(s in args.shapes for s in LAYER):
        print("\nOne Llama-2-7B layer (qkv + o + gate_up + down), median us summed:")
        print("| M | cuBLAS us | ours us | speedup | cuBLAS TB/s | ours TB/s | cuBLAS eager us |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for m in args.rows:
            layer = [r for r in rows if r["m"] == m and r["shape"] in LAYER]
            nbytes = sum(r["bytes"] for r in layer)
            cublas, ours = sum(r["cublas_us"] for r in layer), sum(r["ours_us"] for r in layer)
            eager = sum(r["cublas_eager_us"] for r in layer)
            print(
                f"| {m} | {cublas:.1f} | {ours:.1f} | {cublas / ours:.2f}x | {nbytes / cublas / 1e6:.2f} | "
                f"{nbytes / ours / 1e6:.2f} | {eager:.1f} |"
            )
    if all(s in args.shapes for s in (*LAYER, "lm_head")):
        print("\nGEMM time of one decode step of Llama-2-7B (32 layers + LM head), ms:")
        for m in args.rows:
            per = {r["shape"]: r for r in rows if r["m"] == m}
            cublas, ours = ((32 * sum(per[s][key] for s in LAYER) + per["lm_head"][key]) / 1e3 for key in KEYS)
            print(f"M={m}: cuBLAS {cublas:.2f} ms, ours {ours:.2f} ms")


if __name__ == "__main__":
    main()
