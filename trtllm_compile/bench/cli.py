"""The `bench` subcommand: peers first (they need the memory our KV cache then takes), then our engine."""

from __future__ import annotations

import argparse
import json
import logging
import math

import torch

from trtllm_compile.bench.measure import Measurement, measure_engine, measure_hf
from trtllm_compile.bench.shapes import SHAPES, random_model

logger = logging.getLogger(__name__)

PEERS = ("eager", "inductor")


def add_parser(commands, add_model_args) -> None:
    parser = commands.add_parser("bench", help="tokens/s, TTFT and TPOT against HF eager and HF + torch.compile")
    add_model_args(parser)
    parser.add_argument("--config", choices=sorted(SHAPES), help="random weights of a published shape instead")
    parser.add_argument("--num-layers", type=int, help="cut the --config model to this many layers")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--batch-sizes", default="1,16,64,max", help="comma list; 'max' fills the KV cache")
    parser.add_argument("--compare", default="eager,inductor", help=f"peers to run: {','.join(PEERS)} or none")
    parser.add_argument("--peer-batch-sizes", help="batch sizes for the peers (default: the numeric ones)")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-num-tokens", type=int, default=8192)
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks for trtllm (one GPU each; CPU: gloo)")
    parser.add_argument("--out", help="write the measurements as JSON here")
    parser.add_argument("--plot", help="write a tokens/s plot (PNG) here; needs matplotlib")
    parser.set_defaults(handler=run_bench)


def _prompts(batch: int, input_len: int, vocab: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(1, vocab, (batch, input_len), generator=generator).to(device)


def _peer(name: str, model, prompts: torch.Tensor, output_len: int) -> Measurement:
    if name == "eager":
        return measure_hf("hf-eager", model, prompts, output_len)
    # Hugging Face compiles the forward itself (inductor, CUDA graphs) when generating with a static cache.
    model.generation_config.cache_implementation = "static"
    try:
        return measure_hf("hf-static+inductor", model, prompts, output_len)
    finally:
        model.generation_config.cache_implementation = None
        torch._dynamo.reset()


def run_bench(args: argparse.Namespace) -> int:
    from trtllm_compile.cli import DTYPES
    from trtllm_compile.models import load_model
    from trtllm_compile.runtime.llm import LLM

    peers = [] if args.compare == "none" else [p.strip() for p in args.compare.split(",")]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:  # checked before loading anything: a 7B model takes a while to build
        raise ValueError(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)} or none")
    dtype = DTYPES[args.dtype]
    if args.config:
        model, tokenizer = random_model(args.config, dtype, args.device, args.num_layers), None
    else:
        model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    vocab = model.config.vocab_size
    sizes = [s.strip() for s in args.batch_sizes.split(",")]
    numeric = [int(s) for s in sizes if s != "max"]
    peer_sizes = [int(s) for s in args.peer_batch_sizes.split(",")] if args.peer_batch_sizes else numeric

    results: list[Measurement] = []
    for peer in peers:
        for batch in peer_sizes:
            logger.info("measuring %s at batch %d", peer, batch)
            results.append(_peer(peer, model, _prompts(batch, args.input_len, vocab, args.device), args.output_len))
            torch.cuda.empty_cache() if torch.cuda.is_available() else None

    seq_len = args.input_len + args.output_len
    engine = dict(max_batch_size=args.max_batch_size, max_num_tokens=max(args.max_num_tokens, seq_len))
    system = "trtllm" if args.tp == 1 else f"trtllm tp={args.tp}"
    with LLM(model, tokenizer, device=args.device, tensor_parallel_size=args.tp, **engine) as llm:
        fit = llm.engine.runner.num_blocks // math.ceil(seq_len / llm.engine.config.block_size)
        ours = sorted({min(fit, args.max_batch_size) if s == "max" else int(s) for s in sizes})
        for batch in ours:
            logger.info("measuring %s at batch %d", system, batch)
            prompts = _prompts(batch, args.input_len, vocab, args.device)
            results.append(measure_engine(llm, prompts, args.output_len, system))

    _print_table(results, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "handler"},
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "results": [r.as_dict() for r in results],
                },
                f,
                indent=2,
            )
    if args.plot:
        _plot(results, args.plot)
    return 0


def _print_table(results: list[Measurement], args) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"{args.config or args.model or 'SmolLM2-135M'} {args.dtype} on {device}, {args.input_len} in / "
        f"{args.output_len} out, greedy"
    )
    print(f"{'system':<22}{'batch':>6}{'tokens/s':>12}{'TTFT ms':>10}{'TPOT ms':>10}")
    for r in results:
        print(f"{r.system:<22}{r.batch_size:>6}{r.tokens_per_s:>12.1f}{r.ttft_ms:>10.1f}{r.tpot_ms:>10.2f}")


def _plot(results: list[Measurement], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed (pip install matplotlib): no plot written")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for system in dict.fromkeys(r.system for r in results):
        points = [(r.batch_size, r.tokens_per_s) for r in results if r.system == system]
        ax.plot(*zip(*points, strict=True), marker="o", label=system)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="output tokens/s")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
