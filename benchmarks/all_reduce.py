"""All-reduce latency at decode sizes on this host's GPUs: NCCL, torch's one-shot symmetric-memory kernel, and
ours (kernels/all_reduce.py), alone and ending in the residual add + RMSNorm that follows it in a layer.

    PYTHONPATH=. python benchmarks/all_reduce.py [--gpus 2] [--hidden 4096] [--out docs/results/all_reduce.json]

One process per GPU. For each row count (a decode batch of `hidden`-wide bf16 rows), each path runs 16 chained
calls in a CUDA graph (a decode step makes two per layer, inside its graph); the figure is the median GPU time
per call of rank 0's replays. "NCCL + norm" is what a step without the fused kernel runs after its row-parallel
GEMM: NCCL's all-reduce, then the add + RMSNorm kernel. Each row count also checks that every path gives the
same sums as NCCL, bit for bit (for the norms: the residual sum they return).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trtllm_compile.bench.measure import cuda_graph_us
from trtllm_compile.parallel.collectives import c10d
from trtllm_compile.parallel.launch import free_port
from trtllm_compile.parallel.peer_all_reduce import PeerAllReduce

ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CHAIN = 16
EPS = 1e-5


def _rank_main(rank: int, world_size: int, hidden: int, port: int, out: str | None) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    from torch.distributed import _symmetric_memory as symm_mem

    from trtllm_compile.kernels import norm

    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    group = dist.group.WORLD.group_name
    dtype, max_bytes = torch.bfloat16, max(ROWS) * hidden * 2
    ours = PeerAllReduce(group, device, dtype, hidden, max_bytes=max_bytes)
    torch_buffer = symm_mem.empty(max(ROWS) * hidden, dtype=dtype, device=device)
    symm_mem.rendezvous(torch_buffer, group)
    weight = torch.ones(hidden, dtype=dtype, device=device)

    def nccl(x):
        return c10d.wait_tensor(c10d.all_reduce(x, "sum", group))

    def torch_one_shot(x):
        out = torch.empty_like(x)
        torch.ops.symm_mem.one_shot_all_reduce_copy_out(
            torch_buffer[: x.numel()], x.view(-1), "sum", group, out.view(-1)
        )
        return out

    paths = {
        "nccl": nccl,
        "torch_one_shot": torch_one_shot,
        "ours": ours.all_reduce,
        "nccl_norm": lambda x: norm.add_rms_norm(nccl(x), x, weight, EPS),
        "ours_fused_norm": lambda x: ours.all_reduce_add_rms_norm(x, x, weight, EPS),
    }
    rows = []
    for n in ROWS:
        x = torch.randn(n, hidden, device=device, dtype=dtype)
        reference = {"sum": nccl(x), "norm": paths["nccl_norm"](x)}
        row = {"rows": n, "KiB": n * hidden * 2 >> 10}
        for name, path in paths.items():
            expected = reference["norm" if "norm" in name else "sum"]
            got = path(x)
            row[f"{name}_same"] = torch.equal(got[1], expected[1]) if "norm" in name else torch.equal(got, expected)
            row[f"{name}_us"] = cuda_graph_us(lambda path=path, x=x: [path(x) for _ in range(CHAIN)], CHAIN)
        rows.append(row)
    if rank == 0:
        print(
            f"{world_size} x {torch.cuda.get_device_name(device)}, bf16 rows of {hidden},",
            f"{CHAIN} chained calls per graph",
        )
        print("us per call; 'same': every path gave NCCL's sums")
        print("| rows | KiB | NCCL | torch one-shot | ours | NCCL + add-norm | ours fused add-norm | same |")
        print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            same = all(v for k, v in r.items() if k.endswith("_same"))
            times = " | ".join(f"{r[f'{name}_us']:.1f}" for name in paths)
            print(f"| {r['rows']} | {r['KiB']} | {times} | {same} |")
        if out:
            with open(out, "w") as f:
                json.dump({"gpus": world_size, "device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--hidden", type=int, default=4096, help="row width (the model's hidden size)")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.gpus < 2:
        raise SystemExit(f"needs two or more GPUs, this host has {torch.cuda.device_count()}")
    mp.spawn(_rank_main, args=(args.gpus, args.hidden, free_port(), args.out), nprocs=args.gpus)


if __name__ == "__main__":
    main()
