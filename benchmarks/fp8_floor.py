"""The perplexity cost of FP8 E4M3 weights alone, and of FP8 E4M3 activations alone: what no scheme for the
other half can win back.

    PYTHONPATH=. python benchmarks/fp8_floor.py --text wiki.utf8 [--window 512] [--max-windows 16]
        [--calib c4.utf8 --calib-windows 16]

Weights: every linear the fp8 format quantizes (QuantConfig's `quantizes`: not the LM head) gets its weight replaced
by the FP8 weight `quantize_weight` makes, dequantized back (per-channel, then per-tensor scales, and with --calib
per-channel scales rounded by GPTQ on that text), while activations stay in float.
Activations: the same linears read their input rounded to FP8 with one scale per token (max |x| / 448: the
smallest that saturates nothing), while weights stay in float. E4M3 keeps 3 mantissa bits whatever the scale, so
no other activation scale (static, per channel, smoothed) rounds with materially less error: it only changes which
of the smallest values fall subnormal.

Together they bound issue 5's FP8 perplexity bar on the embedded model (SmolLM2-135M, whose weights are a
dequantized Q4_1 GGUF) from below. CPU is enough (the embedded model in float32). `trtllm-compile eval --formats
fp8` gives the full W8A8 figure on the same windows.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.models import load_model
from trtllm_compile.ops.quant import FP8_MAX, fp8_quantize, per_token_scale
from trtllm_compile.quantization import Calibration, QuantConfig, calibrate, evaluate_perplexity, read_text
from trtllm_compile.quantization.apply import quantize_group_weights
from trtllm_compile.quantization.formats import quantize_weight


@torch.no_grad()
def round_weights_to_fp8(model: torch.nn.Module, config: QuantConfig, calibration: Calibration | None = None) -> int:
    """Replace each weight `config` quantizes by its FP8 value in float (rounded by GPTQ on `calibration`, made
    with grams=True, when config.rounding is "gptq"); returns how many."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and config.quantizes(name):
            if config.rounding == "gptq":
                key = calibration.group_key(name)
                group, stats = calibration.groups[key], calibration.inputs[key]
                quantized = quantize_group_weights(config, [module.weight], group, stats, None, None)[0]
            else:
                quantized = quantize_weight(config, module.weight, None)
            scale = quantized.weight_scale[:, None] if quantized.weight_scale.dim() else quantized.weight_scale
            module.weight.copy_(quantized.weight.float() * scale)
            count += 1
    return count


def _rounded_to_fp8_per_token(module: torch.nn.Module, args: tuple) -> tuple:
    x = args[0]
    scale = per_token_scale(x, FP8_MAX)
    return ((fp8_quantize(x, scale).float() * scale).to(x.dtype), *args[1:])


def round_inputs_to_fp8(model: torch.nn.Module, config: QuantConfig) -> list[torch.utils.hooks.RemovableHandle]:
    """Make each linear `config` quantizes read its input rounded to FP8 E4M3 per token (weights untouched);
    returns the hooks' handles (remove them to undo)."""
    return [
        module.register_forward_pre_hook(_rounded_to_fp8_per_token)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and config.quantizes(name)
    ]


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", required=True, help="evaluation text (UTF-8), e.g. exllamav2's wiki.utf8")
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--max-windows", type=int, default=16)
    parser.add_argument("--calib", help="calibration text: also measure GPTQ-rounded weights")
    parser.add_argument("--calib-windows", type=int, default=16)
    args = parser.parse_args(argv)
    text = read_text(args.text)
    variants = {"channel": {}, "tensor": {"weight_scales": "tensor"}}
    if args.calib:
        variants["channel+gptq"] = {"rounding": "gptq"}
    base, increases = None, {}
    for label, options in variants.items():
        model, tokenizer = load_model(None, dtype=torch.float32, device="cpu")  # float weights again
        if base is None:
            base = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows, progress=False)
        config = QuantConfig.from_name("fp8", activations="dynamic", **options)
        calibration = None
        if config.rounding == "gptq":
            calib = read_text(args.calib)
            calibration = calibrate(model, tokenizer, calib, max_windows=args.calib_windows, samples=0, grams=True)
        count = round_weights_to_fp8(model, config, calibration)
        ppl = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows, progress=False)
        increases[label] = 100 * (ppl / base - 1)
        print(f"FP8 weights only, {label} scales ({count} linears): {ppl:.4f} against {base:.4f}, "
              f"{increases[label]:+.2f}%")  # fmt: skip
    model, tokenizer = load_model(None, dtype=torch.float32, device="cpu")
    hooks = round_inputs_to_fp8(model, QuantConfig.from_name("fp8"))
    ppl = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows, progress=False)
    increases["activations"] = 100 * (ppl / base - 1)
    print(f"FP8 activations only, per-token scales ({len(hooks)} linears): {ppl:.4f} against {base:.4f}, "
          f"{increases['activations']:+.2f}%")  # fmt: skip
    return increases


if __name__ == "__main__":
    main()
