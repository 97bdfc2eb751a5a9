"""The perplexity cost of FP8 E4M3 weights alone: what no activation scheme can win back.

    PYTHONPATH=. python benchmarks/fp8_weight_floor.py --text wiki.utf8 [--window 512] [--max-windows 16]
        [--calib c4.utf8 --calib-windows 16]

Every linear the fp8 format quantizes (QuantConfig's `quantizes`: not the LM head) gets its weight replaced by
the FP8 weight `quantize_weight` makes, dequantized back (per-channel, then per-tensor scales, and with --calib
per-channel scales rounded by GPTQ on that text), while activations stay in float: the floor under issue 5's FP8
perplexity bar on the embedded model (SmolLM2-135M, whose weights are a dequantized Q4_1 GGUF). CPU is enough (the
embedded model in float32). `trtllm-compile eval --formats fp8` gives the full W8A8 figure on the same windows.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.models import load_model
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
    return increases


if __name__ == "__main__":
    main()
