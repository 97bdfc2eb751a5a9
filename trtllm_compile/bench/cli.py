"""The `bench` subcommand: peers first (they need the memory our KV cache then takes), then our engine."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from trtllm_compile.bench.measure import PEERS, Measurement, measure_engine, measure_peer
from trtllm_compile.bench.shapes import SHAPES, random_model
from trtllm_compile.config import CompileConfig
from trtllm_compile.quantization.config import FORMATS, KV_CACHE_FORMATS, QuantConfig

if TYPE_CHECKING:
    from trtllm_compile.quantization.calibration import Calibration

logger = logging.getLogger(__name__)

WEIGHT_FORMATS = ("none", *FORMATS)  # "none": the unquantized model, in --dtype
KV_FORMATS = ("none", *KV_CACHE_FORMATS)
# Speed does not depend on weight values, so a small calibration does (seconds for a 7B model on a GPU).
CALIB_WINDOWS, CALIB_WINDOW, CALIB_SAMPLES = 4, 128, 256


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
    parser.add_argument("--quantization", default="none", help=f"trtllm weight formats: {','.join(WEIGHT_FORMATS)}")
    parser.add_argument(
        "--kv-cache",
        default="none",
        help=f"KV cache formats, each measured with every weight format: {','.join(KV_FORMATS)} ('none': the "
        "model dtype; fp8: calibrated scales)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="measured runs per system and batch (after a warm-up); medians reported"
    )
    parser.add_argument("--out", help="write the measurements as JSON here")
    parser.add_argument("--plot", help="write a tokens/s plot (PNG) here; needs matplotlib")
    parser.set_defaults(handler=run_bench)


def _prompts(batch: int, input_len: int, vocab: int, device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(batch)
    return torch.randint(1, vocab, (batch, input_len), generator=generator).to(device)


def _choices(names: str, known: tuple[str, ...], what: str) -> list[str]:
    chosen = list(dict.fromkeys(name.strip() for name in names.split(",")))
    unknown = [name for name in chosen if name not in known]
    if unknown:
        raise ValueError(f"unknown {what}(s) {unknown}; choose from {', '.join(known)}")
    return chosen


def _batch_sizes(text: str, option: str, allow_max: bool) -> list[str]:
    """`text`'s comma list of positive batch sizes (and 'max' where `allow_max`), checked before the model is built."""
    sizes = [s.strip() for s in text.split(",")]
    if not all(s.isdigit() and int(s) > 0 or (allow_max and s == "max") for s in sizes):
        allowed = "positive integers or 'max'" if allow_max else "positive integers"
        raise ValueError(f"{option} takes a comma list of {allowed}, not {text!r}")
    return sizes


def _variants(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(weight format, KV cache format or None) pairs of --quantization x --kv-cache, checked before the model
    is built (a 7B model takes a while)."""
    formats = _choices(args.quantization, WEIGHT_FORMATS, "quantization format")
    kv_formats = [None if kv == "none" else kv for kv in _choices(args.kv_cache, KV_FORMATS, "KV cache format")]
    if args.tp > 1 and (formats != ["none"] or kv_formats != [None]):
        raise ValueError("bench --quantization or --kv-cache with --tp > 1 is not supported yet; run them separately")
    return [(fmt, kv) for fmt in formats for kv in kv_formats]


def _system(fmt: str, kv_cache: str | None, tp: int = 1) -> str:
    name = "trtllm" if fmt == "none" else f"trtllm {fmt}"
    name += f" tp={tp}" if tp > 1 else ""
    return name + (f" kv={kv_cache}" if kv_cache else "")


def random_calibration(model: nn.Module, formats: list[str], kv_cache: bool) -> Calibration | None:
    """One calibration of the unquantized model, shared by every format (and, with `kv_cache`, the K/V scales);
    random tokens, as for the prompts."""
    if formats == ["none"] and not kv_cache:
        return None
    from trtllm_compile.quantization import calibrate

    generator = torch.Generator().manual_seed(0)
    windows = torch.randint(1, model.config.vocab_size, (CALIB_WINDOWS, CALIB_WINDOW), generator=generator)
    configs = [QuantConfig.from_name(fmt) for fmt in formats if fmt != "none"]
    samples = CALIB_SAMPLES if any(c.needs_samples for c in configs) else 0  # AWQ's scale search reads them
    grams = any(c.needs_grams for c in configs)  # GPTQ's H: K^2 floats per linear input, on the GPU
    logger.info("calibrating on %d windows of %d random tokens, %d AWQ samples", *windows.shape, samples)
    return calibrate(model, windows=windows, samples=samples, grams=grams, kv_cache=kv_cache, progress=False)


def format_config(fmt: str, kv_cache: str | None, calibration: Calibration | None) -> CompileConfig:
    """The compile config that quantizes the step graph's GEMMs to `fmt` ("none": none) and its KV cache to
    `kv_cache` (None: none) with `calibration`."""
    if fmt == "none" and kv_cache is None:
        return CompileConfig()
    weights = None if fmt == "none" else fmt
    return CompileConfig(quantization=QuantConfig.from_name(weights, kv_cache=kv_cache).with_calibration(calibration))


def _measure_format(
    model: nn.Module,
    tokenizer,
    variant: tuple[str, str | None],
    calibration: Calibration | None,
    sizes: list[str],
    args: argparse.Namespace,
) -> list[Measurement]:
    """Our engine on `model` with its GEMMs quantized to the variant's weight format ("none": as they are) and
    its KV cache in the variant's KV format (None: the model dtype), at each of `sizes`.

    The step graph's QUANTIZE passes quantize it (not `quantize()` on the module): they run after the GEMM
    fusion and MLP matching, so Q/K/V and gate/up stay one GEMM each and the activation stays fused."""
    from trtllm_compile.runtime.llm import LLM

    compile_config = format_config(*variant, calibration)
    system, vocab = _system(*variant, args.tp), model.config.vocab_size
    seq_len = args.input_len + args.output_len
    engine = dict(max_batch_size=args.max_batch_size, max_num_tokens=max(args.max_num_tokens, seq_len))
    results = []
    with LLM(
        model, tokenizer, device=args.device, tensor_parallel_size=args.tp, compile=compile_config, **engine
    ) as llm:
        fit = llm.engine.runner.num_blocks // math.ceil(seq_len / llm.engine.config.block_size)
        ours = sorted({min(fit, args.max_batch_size) if s == "max" else int(s) for s in sizes})
        for batch in ours:
            logger.info("measuring %s at batch %d", system, batch)
            prompts = _prompts(batch, args.input_len, vocab, args.device)
            results.append(_logged(measure_engine(llm, prompts, args.output_len, system, args.repeat)))
    return results  # the closed LLM and its quantized weights are freed with this frame


def _logged(m: Measurement) -> Measurement:
    """Each figure as soon as it is measured: a run cut short still leaves the ones it made."""
    logger.info(
        "%s batch %d: %.1f tokens/s, TTFT %.1f ms, TPOT %.2f ms",
        m.system,
        m.batch_size,
        m.tokens_per_s,
        m.ttft_ms,
        m.tpot_ms,
    )
    return m


def _free_device_memory() -> None:
    """Return what the last run held: our engines size their KV cache from the free memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_bench(args: argparse.Namespace) -> int:
    from trtllm_compile.cli import DTYPES
    from trtllm_compile.kernels import tuning
    from trtllm_compile.models import load_model

    peers = [] if args.compare == "none" else [p.strip() for p in args.compare.split(",")]
    unknown = sorted(set(peers) - set(PEERS))
    if unknown:  # checked before loading anything: a 7B model takes a while to build
        raise ValueError(f"unknown peer(s) {unknown}; choose from {', '.join(PEERS)} or none")
    variants = _variants(args)
    if args.repeat < 1:
        raise ValueError(f"--repeat must be at least 1, got {args.repeat}")
    if args.input_len < 1 or args.output_len < 1:
        raise ValueError(f"--input-len and --output-len must be >= 1, got {args.input_len} and {args.output_len}")
    sizes = _batch_sizes(args.batch_sizes, "--batch-sizes", allow_max=True)
    numeric = [int(s) for s in sizes if s != "max"]
    peer_sizes = (
        [int(s) for s in _batch_sizes(args.peer_batch_sizes, "--peer-batch-sizes", False)]
        if args.peer_batch_sizes
        else numeric
    )
    dtype = DTYPES[args.dtype]
    if args.config:
        model, tokenizer = random_model(args.config, dtype, args.device, args.num_layers), None
    else:
        model, tokenizer = load_model(args.model, dtype=dtype, device=args.device)
    vocab = model.config.vocab_size

    results: list[Measurement] = []
    for peer in peers:
        for batch in peer_sizes:
            logger.info("measuring %s at batch %d", peer, batch)
            prompts = _prompts(batch, args.input_len, vocab, args.device)
            results.append(_logged(measure_peer(peer, model, prompts, args.output_len, args.repeat)))
            _free_device_memory()

    kv_cache = any(kv is not None for _, kv in variants)
    calibration = random_calibration(model, sorted({fmt for fmt, _ in variants}), kv_cache)
    for variant in variants:  # one engine at a time: each sizes its KV cache from the free memory
        results += _measure_format(model, tokenizer, variant, calibration, sizes, args)
        _free_device_memory()

    _print_table(results, args)
    if len(variants) > 1:
        _print_side_by_side(results, {_label(*variant): _system(*variant, args.tp) for variant in variants})
    if args.out:
        with open(args.out, "w") as f:
            json.dump(
                {
                    "args": {k: v for k, v in vars(args).items() if k != "handler"},
                    "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "results": [r.as_dict() for r in results],
                    "tuned_plans": tuning.chosen_plans(),  # on a GPU: which plan each kernel shape ran
                },
                f,
                indent=2,
            )
    if args.plot:
        _plot(results, args.plot)
    return 0


def _label(fmt: str, kv_cache: str | None) -> str:
    return fmt if kv_cache is None else f"{fmt}+kv_{kv_cache}"


def _print_table(results: list[Measurement], args) -> None:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"{args.config or args.model or 'SmolLM2-135M'} {args.dtype} on {device}, {args.input_len} in / "
        f"{args.output_len} out, greedy, median of {args.repeat} run{'s' if args.repeat != 1 else ''}"
    )
    print(f"{'system':<22}{'batch':>6}{'tokens/s':>12}{'TTFT ms':>10}{'TPOT ms':>10}{'TPOT range':>16}")
    for r in results:
        spread = f"{min(r.tpot_ms_runs):.3f}-{max(r.tpot_ms_runs):.3f}" if len(r.tpot_ms_runs) > 1 else ""
        line = f"{r.system:<22}{r.batch_size:>6}{r.tokens_per_s:>12.1f}{r.ttft_ms:>10.1f}{r.tpot_ms:>10.3f}"
        print(f"{line} {spread:>15}")  # a separate column however wide the range


def _print_side_by_side(results: list[Measurement], systems: dict[str, str]) -> None:
    """tokens/s of each format (`systems`: format -> system name) at every batch size all of them ran, and each
    one's ratio to the first format, by tokens/s and by decode speed (1 / TPOT: what a step costs, without the
    prefill in TTFT); plus their fullest loads if 'max' gave them different batch sizes."""
    runs = {fmt: {r.batch_size: r for r in results if r.system == system} for fmt, system in systems.items()}
    common = sorted(set.intersection(*(set(by_batch) for by_batch in runs.values())))
    rows = {str(batch): {fmt: by_batch[batch] for fmt, by_batch in runs.items()} for batch in common}
    fullest = {fmt: by_batch[max(by_batch)] for fmt, by_batch in runs.items()}
    if len({r.batch_size for r in fullest.values()}) > 1:
        rows["max"] = fullest
    first, *others = systems
    labels = [*systems, *(f"{fmt} x {first}" for fmt in others), *(f"decode {fmt} x {first}" for fmt in others)]
    widths = [max(10, len(label) + 2) for label in labels]

    def line(batch: str, cells: list[str]) -> str:
        return f"{batch:>6}" + "".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True))

    print("\ntokens/s by format")
    print(line("batch", labels))
    for batch, row in rows.items():
        speeds = [f"{row[fmt].tokens_per_s:.1f}" for fmt in systems]
        ratios = [f"{row[fmt].tokens_per_s / row[first].tokens_per_s:.2f}x" for fmt in others]
        # three decimals: a bar such as 2.5x must not be met by rounding (2.499x printed 2.50x, run 73)
        decode_ratios = [f"{row[first].tpot_ms / row[fmt].tpot_ms:.3f}x" for fmt in others]
        print(line(batch, speeds + ratios + decode_ratios))


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
