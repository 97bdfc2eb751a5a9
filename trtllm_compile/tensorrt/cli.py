"""`trtllm-compile build [MODEL] --target tensorrt --out DIR`: the CLI piece of the TensorRT target.

The main CLI (trtllm_compile/cli.py) adds this subcommand with `add_build_parser(subparsers)` and calls
`run_build(args)`, which builds, writes the engines and manifest to DIR and prints the layer summary.
"""

from __future__ import annotations

import argparse
import logging

import torch

from trtllm_compile.tensorrt import trt as flavour

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def add_build_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("build", help="build TensorRT engines (prefill and decode) for a model")
    parser.add_argument("model", nargs="?", default=None, help="local Hugging Face folder (default: SmolLM2-135M)")
    parser.add_argument("--target", choices=["tensorrt"], default="tensorrt", help="what to build (tensorrt)")
    parser.add_argument("--out", required=True, help="folder for the engines, manifest.json and the tokenizer")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float16")
    parser.add_argument(
        "--sm", default=flavour.DEFAULT_SM, help=f"compute capability to compile for (default {flavour.DEFAULT_SM})"
    )
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--max-seq-len", type=int, default=512)
    parser.add_argument("--max-num-tokens", type=int, default=None, help="prefill tokens per sequence")
    parser.add_argument("--refittable", action="store_true", help="build engines whose weights can be refit")
    parser.add_argument("--partition", action="store_true", help="run unconvertible ops in PyTorch between engines")
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (one engine pair each, OUT/rank<r>)")
    parser.add_argument("--cache-dir", default=None, help="engine cache folder (default: the trtllm_compile cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_build)
    return parser


def run_build(args: argparse.Namespace) -> int:
    from trtllm_compile.models import load_model
    from trtllm_compile.tensorrt.build import build

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    model, tokenizer = load_model(args.model)
    options = dict(
        max_batch_size=args.max_batch_size,
        max_seq_len=args.max_seq_len,
        max_num_tokens=args.max_num_tokens,
        dtype=DTYPES[args.dtype],
        target_sm=args.sm,
        refittable=args.refittable,
        cache_dir=args.cache_dir,
        out_dir=args.out,
        partition=args.partition,
        tokenizer=tokenizer,
        progress=not args.no_progress,
    )
    if args.tp > 1:
        from trtllm_compile.tensorrt.parallel import build_rank_engines

        results = build_rank_engines(model, args.tp, **options)
    else:
        results = [build(model, **options)]
    for rank, result in enumerate(results):
        if len(results) > 1:
            print(f"rank {rank} of {len(results)}:")  # noqa: T201  (the CLI's output)
        print(result.summary())  # noqa: T201
    return 0
