"""Tensor-parallel decode on the 2-GPU machine (issue 7). Random weights of published shapes, bf16, CUDA target.

    python benchmarks/tp_decode.py compare [--layers 32] [--out docs/results/tp_compare.json]
        Llama-2-7B shape: TP=1 (cuda:0), then TP=2 (cuda:0 + cuda:1) on the same weights, in one run: greedy
        tokens identical?, batch-1 decode latency per token (TPOT) and its TP=2 / TP=1 ratio (issue 7 asks
        <= 0.7), max-load throughput (the batch that fills the KV cache). `--all-reduce peer,nccl` runs TP=2
        twice: decode all-reduces over peer memory (the default), then all on NCCL. `--compare eager,inductor`
        (the default) also runs the HF peers at batch 1 on cuda:0. `--tp-invariant both` measures TP=1 and TP=2
        once more with CompileConfig(tp_invariant=2) (bit-identical outputs, fixed kernel plans); `only` skips
        the fast runs.
    python benchmarks/tp_decode.py big [--layers N] [--out ...]
        Llama-2-70B shape cut to N layers (default: the fewest whose bf16 weights exceed one GPU's memory):
        loads across the two GPUs and generates. The model is made once on the host and shared with rank 1
        (shared memory, not copied); ranks build in turn and GEMM fusion is off, so the host holds the model
        plus one rank's slices at a time (fusing 70B-shaped layers on the host would add ~65% of the model).

Weights: seeded normal(0, 0.02) values tiled from a 16M-value pool (a prime length, so no two rows repeat),
norm weights 1: making 40 B random values on the host would take longer than the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import shutil
import sys
import time

import torch
import transformers

from trtllm_compile.bench.measure import PEERS, Measurement, measure_engine, measure_peer
from trtllm_compile.bench.shapes import SHAPES
from trtllm_compile.config import CompileConfig
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams

logger = logging.getLogger("tp_decode")

LLAMA_2_70B = SHAPES["llama-2-70b"][1]
DEVICE = "cuda:0"  # rank 0's device, and TP=1's
_POOL = 16_777_213  # a prime: row starts of a tiled weight never coincide


def seeded_model(shape: str, num_layers: int, seed: int = 0) -> torch.nn.Module:
    """A bf16 model on the CPU with fast, reproducible weights (the same on every rank that calls this)."""
    fields = SHAPES[shape][1]
    config = transformers.LlamaConfig(**{**fields, "num_hidden_layers": num_layers})
    config.eos_token_id = None
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model = model.to_empty(device="cpu")  # allocated in bf16 directly: no fp32 copy of a 100 GB model
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers were left empty on meta
    pool = torch.randn(_POOL, generator=torch.Generator().manual_seed(seed)).mul_(0.02).to(torch.bfloat16)
    offset = 0
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.fill_(1.0)
                continue
            flat, done = param.view(-1), 0
            while done < flat.numel():
                start = (offset + done) % _POOL
                n = min(flat.numel() - done, _POOL - start)
                flat[done : done + n] = pool[start : start + n]
                done += n
            offset += 7919 * (flat.numel() % _POOL + 1)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _prompts(batch: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab, (batch, length), generator=generator).tolist()


def _measure(llm, label: str, args, vocab: int) -> dict:
    """Greedy tokens of the check prompts, batch-1 decode, and max load (the batch that fills the KV cache)."""
    check = _prompts(4, 32, vocab, seed=1)
    tokens = [o.token_ids for o in llm.generate(check, SamplingParams(max_tokens=args.check_tokens, temperature=0))]
    seq_len = args.input_len + args.output_len
    fit = llm.engine.runner.num_blocks // math.ceil(seq_len / llm.engine.config.block_size)
    results = []
    for batch in (1, min(fit, args.max_batch_size)):
        prompts = torch.tensor(_prompts(batch, args.input_len, vocab, seed=batch), device=DEVICE)
        m: Measurement = measure_engine(llm, prompts, args.output_len)
        m.system = label
        results.append(m.as_dict())
        logger.info("%s batch %d: %.1f tokens/s, TPOT %.2f ms", label, batch, m.tokens_per_s, m.tpot_ms)
    return {"tokens": tokens, "measurements": results}


def _engine_args(args, invariant: bool) -> dict:
    return dict(
        max_batch_size=args.max_batch_size,
        max_num_tokens=max(args.max_num_tokens, 2 * args.input_len),
        compile=CompileConfig(tp_invariant=2 if invariant else 0),
    )


def compare(args) -> dict:
    factory = _Factory("llama-2-7b", args.layers or 32)
    model = factory().to(DEVICE)
    vocab = model.config.vocab_size
    runs = {}
    peers = [name for name in args.compare.split(",") if name and name != "none"]
    if peers:  # batch 1 on cuda:0, the same weights, before an engine takes the free memory for its KV cache
        prompt = torch.tensor(_prompts(1, args.input_len, vocab, seed=1), device=DEVICE)
        runs["peers"] = {"measurements": [measure_peer(p, model, prompt, args.output_len).as_dict() for p in peers]}
        gc.collect()
        torch.cuda.empty_cache()
    modes = {"no": [False], "both": [False, True], "only": [True]}[args.tp_invariant]
    for invariant in modes:
        suffix = " invariant" if invariant else ""
        llm = LLM(model, **_engine_args(args, invariant))
        runs[f"tp1{suffix}"] = _measure(llm, f"trtllm tp=1{suffix}", args, vocab)
        del llm
        gc.collect()
        torch.cuda.empty_cache()
    del model
    gc.collect()
    torch.cuda.empty_cache()
    for invariant in modes:
        for path in args.all_reduce.split(","):  # the workers inherit the switch through the environment
            os.environ["TRTLLM_PEER_ALL_REDUCE"] = "1" if path == "peer" else "0"
            name = f"tp2 {path}{' invariant' if invariant else ''}"
            with LLM(factory, tensor_parallel_size=2, **_engine_args(args, invariant)) as llm:
                runs[name] = _measure(llm, f"trtllm {name.replace('tp2', 'tp=2')}", args, vocab)
            del llm  # its weights and KV cache go before the next run sizes its cache from free memory
            gc.collect()
            torch.cuda.empty_cache()
    os.environ.pop("TRTLLM_PEER_ALL_REDUCE")
    print(f"Llama-2-7B shape ({args.layers or 32} layers) bf16, {_device_name()} x2")
    summary = {}
    for name, run in runs.items():
        if not name.startswith("tp2"):
            continue
        tp1 = runs["tp1 invariant" if name.endswith("invariant") else "tp1"]
        agree = [
            next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a))
            for a, b in zip(tp1["tokens"], run["tokens"], strict=True)
        ]
        ratio = run["measurements"][0]["tpot_ms"] / tp1["measurements"][0]["tpot_ms"]
        summary[name] = {"identical": agree == [len(t) for t in tp1["tokens"]], "agree": agree, "tpot_ratio": ratio}
        print(f"{name}: greedy tokens identical to TP=1: {summary[name]['identical']} (agreeing for {agree})")
        print(f"{name}: batch-1 TPOT TP=2 / TP=1: {ratio:.2f} (issue 7 target <= 0.7)")
    print(f"{'system':<22}{'batch':>6}{'tokens/s':>12}{'TTFT ms':>10}{'TPOT ms':>10}")
    for run in runs.values():
        for m in run["measurements"]:
            print(
                f"{m['system']:<22}{m['batch_size']:>6}{m['tokens_per_s']:>12.1f}{m['ttft_ms']:>10.1f}"
                f"{m['tpot_ms']:>10.2f}"
            )
    return {"runs": runs, "summary": summary}


def big(args) -> dict:
    card = torch.cuda.get_device_properties(0).total_memory
    h, inter, vocab = LLAMA_2_70B["hidden_size"], LLAMA_2_70B["intermediate_size"], LLAMA_2_70B["vocab_size"]
    kv = h * LLAMA_2_70B["num_key_value_heads"] // LLAMA_2_70B["num_attention_heads"]
    per_layer, fixed = 2 * h * (2 * h + 2 * kv + 3 * inter), 2 * 2 * vocab * h  # bf16 bytes
    layers = args.layers or min(80, math.ceil((card - fixed) / per_layer) + 1)
    if fixed + layers * per_layer <= card:
        logger.warning(
            "even 80 layers (all of Llama-2-70B) fit one %.0f GiB card: this shows loading only", card / 2**30
        )
    shm = shutil.disk_usage("/dev/shm").free if os.path.exists("/dev/shm") else 0
    if shm < fixed + layers * per_layer:
        logger.warning("/dev/shm has %.0f GiB free: too little to share the model with rank 1", shm / 2**30)
    torch.multiprocessing.set_sharing_strategy("file_system")  # hundreds of shared weights: not one fd each
    start = time.perf_counter()
    model = seeded_model("llama-2-70b", layers)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    logger.info("made %d layers on the host (%.1f GiB) in %.0f s", layers, weights / 2**30, time.perf_counter() - start)
    engine = dict(
        max_batch_size=8, max_num_tokens=1024, compile=CompileConfig(disable_passes=frozenset({"fuse_gemms"}))
    )
    start = time.perf_counter()
    with LLM(model, tensor_parallel_size=2, build_in_turn=True, **engine) as llm:
        loaded = time.perf_counter() - start
        del model
        used = torch.cuda.memory_allocated(0)
        prompts = _prompts(2, 32, vocab, seed=3)
        start = time.perf_counter()
        outputs = llm.generate(prompts, SamplingParams(max_tokens=32, temperature=0))
        seconds = time.perf_counter() - start
    print(
        f"Llama-2-70B shape cut to {layers} layers: {weights / 2**30:.1f} GiB of bf16 weights, one card "
        f"{card / 2**30:.1f} GiB ({_device_name()})"
    )
    print(f"TP=2 built in {loaded:.0f} s; rank 0 holds {used / 2**30:.1f} GiB (its shard + KV cache)")
    print(
        f"generated {sum(len(o.token_ids) for o in outputs)} tokens for 2 prompts in {seconds:.1f} s: "
        f"{[o.token_ids[:8] for o in outputs]}"
    )
    return {
        "layers": layers,
        "weights_gib": weights / 2**30,
        "card_gib": card / 2**30,
        "build_s": loaded,
        "rank0_gib": used / 2**30,
        "generate_s": seconds,
        "tokens": [o.token_ids for o in outputs],
    }


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


class _Factory:
    """A picklable `seeded_model` call: every rank makes the same weights itself."""

    def __init__(self, shape: str, layers: int):
        self.shape, self.layers = shape, layers

    def __call__(self) -> torch.nn.Module:
        return seeded_model(self.shape, self.layers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("compare", "big"))
    parser.add_argument("--layers", type=int, help="cut the model to this many layers")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--check-tokens", type=int, default=64, help="greedy tokens compared between TP=1 and 2")
    parser.add_argument("--max-batch-size", type=int, default=256)
    parser.add_argument("--max-num-tokens", type=int, default=8192)
    parser.add_argument("--compare", default="eager,inductor", help="HF peers at batch 1: eager, inductor, or none")
    parser.add_argument(
        "--all-reduce", default="peer", help="TP=2 runs to make: peer (one-shot over peer memory), nccl, or both"
    )
    parser.add_argument(
        "--tp-invariant",
        choices=("no", "both", "only"),
        default="no",
        help="compare: also (both) or only run with CompileConfig(tp_invariant=2)",
    )
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if torch.cuda.device_count() < 2:
        print("needs two GPUs", file=sys.stderr)
        return 2
    unknown = {name for name in args.compare.split(",") if name} - {*PEERS, "none"}
    if unknown:  # said before a 7B model is made
        print(f"unknown peer(s) {sorted(unknown)}; choose from {', '.join(PEERS)} or none", file=sys.stderr)
        return 2
    result = compare(args) if args.mode == "compare" else big(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"mode": args.mode, "device": _device_name(), **result}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
