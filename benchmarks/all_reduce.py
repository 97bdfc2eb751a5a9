"""All-reduce latency on this host's GPUs: NCCL against the one-shot peer-memory kernel (`PeerAllReduce`).

    PYTHONPATH=. python benchmarks/all_reduce.py [--gpus 2] [--out docs/results/all_reduce.json]

One process per GPU. For each message size, each path runs 16 chained bf16 all-reduces in a CUDA graph (a
decode step makes two per layer, inside its graph); the figure is the median GPU time per all-reduce of rank
0's replays. The peer buffer is made as large as the largest size, so the one-shot kernel is timed at sizes
the runtime leaves to NCCL: where it stops winning is `peer_all_reduce.ONE_SHOT_MAX_BYTES`. Each size also
checks that both paths give the same sums.
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

SIZES_KIB = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
CHAIN = 16


def _rank_main(rank: int, world_size: int, port: int, out: str | None) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    device = torch.device("cuda", rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    group = dist.group.WORLD.group_name
    peer = PeerAllReduce(group, device, torch.bfloat16, max_bytes=max(SIZES_KIB) << 10)
    rows = []
    for kib in SIZES_KIB:
        x = torch.randn((kib << 10) // 2, device=device, dtype=torch.bfloat16)

        def nccl(x=x):
            for _ in range(CHAIN):
                c10d.wait_tensor(c10d.all_reduce(x, "sum", group))

        def one_shot(x=x):
            for _ in range(CHAIN):
                peer.all_reduce(x)

        same = torch.equal(peer.all_reduce(x), c10d.wait_tensor(c10d.all_reduce(x, "sum", group)))
        rows.append(
            {
                "KiB": kib,
                "nccl_us": cuda_graph_us(nccl, CHAIN),
                "one_shot_us": cuda_graph_us(one_shot, CHAIN),
                "same": same,
            }
        )
    if rank == 0:
        print(f"{world_size} x {torch.cuda.get_device_name(device)}, bf16, {CHAIN} chained all-reduces per graph")
        print("| KiB | NCCL us | one-shot us | same sums |\n| ---: | ---: | ---: | --- |")
        for r in rows:
            print(f"| {r['KiB']} | {r['nccl_us']:.1f} | {r['one_shot_us']:.1f} | {r['same']} |")
        if out:
            with open(out, "w") as f:
                json.dump({"gpus": world_size, "device": torch.cuda.get_device_name(device), "rows": rows}, f, indent=1)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.gpus < 2:
        raise SystemExit(f"needs two or more GPUs, this host has {torch.cuda.device_count()}")
    mp.spawn(_rank_main, args=(args.gpus, free_port(), args.out), nprocs=args.gpus)


if __name__ == "__main__":
    main()
