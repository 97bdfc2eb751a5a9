"""Microbenchmarks of the cuda target's Triton kernels: achieved bandwidth against this GPU's copy rate.

    PYTHONPATH=. python benchmarks/kernels_microbench.py

GPU us: median time per call of a CUDA graph replaying the kernel over enough distinct buffers that the
working set exceeds L2 (up to 64 copies), so launch overhead and L2 hits are both excluded. Eager us:
`triton.testing.do_bench` median of a plain call (L2 flushed), which includes the Python launch cost when the
GPU work is shorter. Host us: CPU time per call of back-to-back launches. GB/s counts the bytes a kernel must
move once (decode attention: K/V of every cached position, q and out); the copy rate is an eager
`dst.copy_(src)` of 1 GiB measured in the same run. Peer: torch SDPA over contiguous K/V, or the eager
PyTorch reference.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

from trtllm_compile.bench.measure import gpu_us
from trtllm_compile.kernels import activation, norm, paged_attention, tuning
from trtllm_compile.ops.norm import rms_norm_reference

L2_FLUSH_BYTES = 256 << 20


def eager_and_host_us(fn, args: tuple) -> tuple[float, float]:
    eager = do_bench(lambda: fn(*args), warmup=25, rep=100, return_mode="median") * 1e3
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(200):
        fn(*args)
    host = (time.perf_counter() - start) / 200 * 1e6
    torch.cuda.synchronize()
    return eager, host


def copies_for(nbytes: int) -> int:
    return max(1, min(64, math.ceil(L2_FLUSH_BYTES / nbytes)))


def copy_rate_gbs() -> float:
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    # Timed eagerly: in a CUDA graph copy_ becomes a memcpy node served by the copy engines, which measured
    # 2.7 TB/s on an H200 against 4.2 TB/s here; at 1 GiB the launch cost is negligible.
    return 2 * src.numel() / do_bench(lambda: dst.copy_(src), return_mode="median") / 1e6


def _decode_args(batch, hq, hkv, d, context, page, dtype):
    blocks = batch * (context // page)
    k_cache = torch.randn(blocks, page, hkv, d, dtype=dtype, device="cuda")
    tables = torch.randperm(blocks, device="cuda").view(batch, -1).int()
    lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
    q = torch.randn(batch, hq, d, dtype=dtype, device="cuda")
    return q, k_cache, torch.randn_like(k_cache), tables, lens, 1 / math.sqrt(d), 0.0, -1, torch.empty_like(q)


def _sdpa_args(batch, hq, hkv, d, context, dtype):
    k = torch.randn(batch, hkv, context, d, dtype=dtype, device="cuda")
    q = torch.randn(batch, hq, 1, d, dtype=dtype, device="cuda")
    return q, k, torch.randn_like(k)


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def decode_rows(context: int, page: int, dtype: torch.dtype):
    for name, hq, hkv in (("Llama-2-7B", 32, 32), ("Llama-3-8B", 32, 8)):
        for batch in (1, 16, 64):
            d = 128
            nbytes = (2 * batch * context * hkv * d + 2 * batch * hq * d) * dtype.itemsize
            copies = copies_for(nbytes)
            fn = paged_attention.paged_decode_attention
            arg_sets = [_decode_args(batch, hq, hkv, d, context, page, dtype) for _ in range(copies)]
            ours = gpu_us(fn, arg_sets)
            eager, host = eager_and_host_us(fn, arg_sets[0])
            q, k_cache = arg_sets[0][:2]
            del arg_sets
            peer = gpu_us(_sdpa, [_sdpa_args(batch, hq, hkv, d, context, dtype) for _ in range(copies)])
            splits = paged_attention.plan_splits(batch * hkv, context, torch.device("cuda"))
            plan = tuning.plans.get(paged_attention.plan_key(q, k_cache, splits, 0.0, -1), "untuned")
            label = f"decode {name} ({hq}q/{hkv}kv) bs={batch} ctx={context} page={page} splits={splits} {plan}"
            yield label, ours, nbytes, eager, host, peer


def _eager_add_rms_norm(x, res, w):
    summed = x + res
    return rms_norm_reference(summed, w, 1e-6, False), summed


def _eager_swiglu(gate, up, _activation):
    return F.silu(gate) * up


def _norm_args(rows, hidden, dtype):
    x = torch.randn(rows, hidden, dtype=dtype, device="cuda")
    return x, torch.randn_like(x), torch.randn(hidden, dtype=dtype, device="cuda")


def elementwise_rows(dtype: torch.dtype):
    hidden, inter = 4096, 11008
    for rows in (16, 256, 4096, 16384):
        nbytes = 2 * rows * hidden * dtype.itemsize

        sets = [_norm_args(rows, hidden, dtype) for _ in range(copies_for(2 * nbytes))]
        plain = [(x, w, 1e-6) for x, _, w in sets]
        ours, (eager, host) = gpu_us(norm.rms_norm, plain), eager_and_host_us(norm.rms_norm, plain[0])
        peer = gpu_us(rms_norm_reference, [(*a, False) for a in plain])
        yield f"rms_norm rows={rows} hidden={hidden}", ours, nbytes, eager, host, peer
        fused = [(x, r, w, 1e-6) for x, r, w in sets]
        ours, (eager, host) = gpu_us(norm.add_rms_norm, fused), eager_and_host_us(norm.add_rms_norm, fused[0])
        peer = gpu_us(_eager_add_rms_norm, [a[:3] for a in fused])
        yield f"add_rms_norm rows={rows} hidden={hidden}", ours, 2 * nbytes, eager, host, peer
    for rows in (16, 4096):
        nbytes = 3 * rows * inter * dtype.itemsize
        bufs = [torch.randn(rows, 2 * inter, dtype=dtype, device="cuda") for _ in range(copies_for(nbytes))]
        sets = [(b[:, :inter], b[:, inter:], "silu") for b in bufs]
        fn = activation.mlp_activation
        ours, (eager, host), peer = gpu_us(fn, sets), eager_and_host_us(fn, sets[0]), gpu_us(_eager_swiglu, sets)
        yield f"silu(gate)*up rows={rows} inter={inter}", ours, nbytes, eager, host, peer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--pages", type=int, nargs="+", default=[16, 64])
    args = parser.parse_args()
    dtype = torch.bfloat16
    copy = copy_rate_gbs()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, copy rate {copy:.0f} GB/s, bf16")
    print("| kernel | GPU us | GB/s | % of copy | eager us | host us | peer GPU us |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    rows = [r for page in args.pages for r in decode_rows(args.context, page, dtype)]
    rows += list(elementwise_rows(dtype))
    for label, us, nbytes, eager, host, peer in rows:
        gbs = nbytes / us / 1e3
        print(f"| {label} | {us:.1f} | {gbs:.0f} | {100 * gbs / copy:.0f}% | {eager:.1f} | {host:.1f} | {peer:.1f} |")


if __name__ == "__main__":
    main()
