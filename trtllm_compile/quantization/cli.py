"""`trtllm-compile quantize` and `trtllm-compile eval`: the argparse pieces the main CLI mounts.

    trtllm-compile quantize [MODEL] --format int4_awq --calib c4.utf8 --out smollm2-awq
    trtllm-compile eval [MODEL|DIR ...] --text wiki.utf8 [--window 512 --max-windows 16]
    trtllm-compile eval --text wiki.utf8 --calib c4.utf8 --formats fp8,int8_sq,int4_awq,int4_gptq,int4_rtn

MODEL is a local Hugging Face folder (default: the embedded SmolLM2-135M-Instruct); DIR a folder written by
`quantize` (or `save_quantized`). `eval` prints one perplexity per model, and per format with --formats (the
first model quantized in memory), with the change against the first row.
"""

from __future__ import annotations

import argparse
import copy
import json

from trtllm_compile.quantization.config import FORMATS, KV_CACHE_FORMATS, QuantConfig


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Add the `quantize` and `eval` subcommands; each sets `handler(args) -> exit code`."""
    quantize = subparsers.add_parser("quantize", help="calibrate a model on text, quantize it and save it")
    quantize.add_argument("model", nargs="?", help="Hugging Face model folder (default: the embedded model)")
    quantize.add_argument("--format", default="fp8", choices=sorted(FORMATS), help="quantization format")
    quantize.add_argument("--kv-cache", choices=KV_CACHE_FORMATS, help="also store K/V in this format")
    quantize.add_argument("--calib", required=True, metavar="FILE", help="calibration text (UTF-8)")
    quantize.add_argument("--out", required=True, metavar="DIR", help="folder to write the checkpoint to")
    quantize.add_argument("--calib-window", type=int, default=512, help="tokens per calibration window")
    quantize.add_argument("--calib-windows", type=int, default=32, help="calibration windows")
    _add_option_flag(quantize)
    quantize.set_defaults(handler=run_quantize)

    evaluate = subparsers.add_parser("eval", help="perplexity over fixed non-overlapping windows of a text")
    evaluate.add_argument("models", nargs="*", metavar="MODEL|DIR", help="models to compare (default: embedded)")
    evaluate.add_argument("--text", required=True, metavar="FILE", help="evaluation text (UTF-8)")
    evaluate.add_argument("--window", type=int, default=512, help="tokens per window")
    evaluate.add_argument("--max-windows", type=int, help="evaluate only the first N windows")
    evaluate.add_argument("--formats", help="comma-separated formats to quantize the first model to, in memory")
    evaluate.add_argument("--kv-cache", choices=KV_CACHE_FORMATS, help="with --formats: also quantize K/V")
    evaluate.add_argument("--calib", metavar="FILE", help="with --formats: calibration text")
    evaluate.add_argument("--calib-windows", type=int, default=32, help="with --formats: calibration windows")
    _add_option_flag(evaluate)
    evaluate.set_defaults(handler=run_eval)


def _add_option_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="other QuantConfig field, value as JSON (e.g. -o alpha=0.8 -o 'exclude=[]')",
    )


def _options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--option {pair!r}: expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def load_any(path: str | None):
    """(model, tokenizer) from a quantized checkpoint, a Hugging Face folder, or the embedded model (None)."""
    from trtllm_compile.models import load_model
    from trtllm_compile.quantization.checkpoint import is_quantized_checkpoint, load_quantized

    if path is not None and is_quantized_checkpoint(path):
        from transformers import AutoTokenizer

        return load_quantized(path), AutoTokenizer.from_pretrained(path, local_files_only=True)
    return load_model(path)


def _label(path: str | None) -> str:
    from trtllm_compile.models import DEFAULT_MODEL_NAME

    return path or DEFAULT_MODEL_NAME


def run_quantize(args: argparse.Namespace) -> int:
    from trtllm_compile.quantization import quantize, read_text
    from trtllm_compile.quantization.checkpoint import check_output_folder, save_quantized

    check_output_folder(args.out)  # before the calibration, not after it
    options = {"calib_window": args.calib_window, "calib_windows": args.calib_windows, **_options(args.option)}
    config = QuantConfig.from_name(args.format, kv_cache=args.kv_cache, **options)
    model, tokenizer = load_any(args.model)
    quantize(model, config, read_text(args.calib), tokenizer)
    out = save_quantized(model, args.out, tokenizer)
    print(f"wrote {config.format} checkpoint of {_label(args.model)} to {out}")
    return 0


def format_table(rows: list[tuple[str, str, float]]) -> str:
    """Rows of (model, format, perplexity) as a text table, each compared with the first row."""
    width = max(len("model"), *(len(model) for model, _, _ in rows))
    fmt_width = max(len("format"), *(len(fmt) for _, fmt, _ in rows))
    lines = [f"{'model':<{width}}  {'format':<{fmt_width}}  {'perplexity':>10}  {'change':>8}"]
    baseline = rows[0][2]
    for index, (model, fmt, ppl) in enumerate(rows):
        change = f"{100 * (ppl / baseline - 1):+.2f}%" if index else "-"
        lines.append(f"{model:<{width}}  {fmt:<{fmt_width}}  {ppl:>10.4f}  {change:>8}")
    return "\n".join(lines)


def _format_of(model) -> str:
    """ "float32", or the format with its activation mode, rounding and KV cache: "fp8-static+gptq+kv_fp8"."""
    config = getattr(model, "trtllm_quant_config", None)
    if config is None:
        return str(model.dtype).removeprefix("torch.")
    label = config.format or "float"
    if config.format in ("fp8", "int8_sq"):
        label += f"-{config.activations}"
    if config.rounding == "gptq" and config.format != "int4_gptq":
        label += "+gptq"
    return label + (f"+kv_{config.kv_cache}" if config.kv_cache else "")


def run_eval(args: argparse.Namespace) -> int:
    from trtllm_compile.quantization import calibrate, evaluate_perplexity, quantize, read_text

    text = read_text(args.text)
    formats = [f for f in (args.formats or "").split(",") if f]
    if formats and not args.calib:
        raise SystemExit("--formats needs --calib FILE: quantizing calibrates on that text")
    rows = []
    first = None
    for path in args.models or [None]:
        model, tokenizer = load_any(path)
        first = first or (model, tokenizer, path)
        ppl = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows)
        rows.append((_label(path), _format_of(model), ppl))
    if formats:
        model, tokenizer, path = first
        configs = [QuantConfig.from_name(f, kv_cache=args.kv_cache, **_options(args.option)) for f in formats]
        calibration = calibrate(
            model,
            tokenizer,
            read_text(args.calib),
            max_windows=args.calib_windows,
            samples=max(c.calib_samples for c in configs) if any(c.needs_samples for c in configs) else 0,
            grams=any(c.needs_grams for c in configs),
            kv_cache=args.kv_cache is not None,
        )
        for config in configs:
            quantized = quantize(copy.deepcopy(model), config, calibration=calibration)
            ppl = evaluate_perplexity(quantized, tokenizer, text, args.window, args.max_windows)
            rows.append((_label(path), _format_of(quantized), ppl))
            del quantized
    print(f"perplexity of {args.text}: windows of {args.window} tokens, max {args.max_windows or 'all'}")
    print(format_table(rows))
    return 0
