"""Every plan of the paged decode-attention kernel as its tuner times them, with the K/V bandwidth each reached.

    PYTHONPATH=. python benchmarks/decode_attention_plans.py [--heads 32 32] [--sequences 1 64 256 512]

For each cache dtype (bf16, FP8 E4M3) and sequence count, one call of `paged_decode_attention` makes the tuner
(kernels/tuning.py) time each plan on its sample: every sequence holding `paged_attention.TUNE_CONTEXT` tokens,
replayed from a CUDA graph after an L2 sweep. TB/s counts the K and V bytes of those tokens.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.kernels import paged_attention, tuning

PAGE, HEAD_DIM = 16, 128


def plan_times(n_seq: int, q_heads: int, kv_heads: int, cache_dtype: torch.dtype) -> tuple[dict[str, float], int]:
    """{plan: ms} of the tuner's sample for `n_seq` sequences, and the K/V bytes that sample reads."""
    blocks_per_seq = paged_attention.TUNE_CONTEXT // PAGE
    k_cache = torch.randn(n_seq * blocks_per_seq, PAGE, kv_heads, HEAD_DIM, device="cuda").to(cache_dtype)
    v_cache = torch.randn_like(k_cache, dtype=torch.float32).to(cache_dtype)
    scales = {}
    if cache_dtype == torch.float8_e4m3fn:
        scales = dict(k_scale=torch.tensor(0.05, device="cuda"), v_scale=torch.tensor(0.05, device="cuda"))
    q = torch.randn(n_seq, q_heads, HEAD_DIM, dtype=torch.bfloat16, device="cuda")
    tables = torch.zeros(n_seq, blocks_per_seq, dtype=torch.int32, device="cuda")
    lens = torch.zeros(n_seq, dtype=torch.int32, device="cuda")  # the tuner times its own sample, not these
    tuning.plans.clear()
    paged_attention.paged_decode_attention(q, k_cache, v_cache, tables, lens, HEAD_DIM**-0.5, **scales)
    splits = paged_attention.plan_splits(n_seq * kv_heads, blocks_per_seq * PAGE, q.device)
    key = paged_attention.plan_key(q, k_cache, splits, 0.0, -1)
    return tuning.tuning_log[key], 2 * k_cache.numel() * k_cache.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, nargs=2, default=[32, 32], metavar=("Q", "KV"))
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 64, 256, 512])
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, heads {args.heads}, D {HEAD_DIM}")
    print("| cache | sequences | plan | us | K/V TB/s |")
    print("| --- | ---: | --- | ---: | ---: |")
    for cache_dtype in (torch.bfloat16, torch.float8_e4m3fn):
        for n_seq in args.sequences:
            times, nbytes = plan_times(n_seq, *args.heads, cache_dtype)
            for plan, ms in sorted(times.items(), key=lambda item: item[1]):
                print(f"| {cache_dtype} | {n_seq} | {plan} | {1e3 * ms:.1f} | {nbytes / ms / 1e9:.2f} |")


if __name__ == "__main__":
    main()
