"""The perplexity cost of FP8 E4M3 weights alone: what no activation scheme can win back.

    PYTHONPATH=. python benchmarks/fp8_weight_floor.py --text wiki.utf8 [--window 512] [--max-windows 16]

Every linear the fp8 format quantizes (QuantConfig's `quantizes`: not the LM head) gets its weight replaced by
the FP8 weight `quantize_weight` makes, dequantized back (per-channel, then per-tensor scales), while activations
stay in float: the floor under issue 5's FP8 perplexity bar on the embedded model (SmolLM2-135M, whose weights are a
dequantized Q4_1 GGUF). CPU is enough (the embedded model in float32). `trtllm-compile eval --formats fp8` gives
the full W8A8 figure on the same windows.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.models import load_model
from trtllm_compile.quantization import QuantConfig, evaluate_perplexity, read_text
from trtllm_compile.quantization.formats import quantize_weight


@torch.no_grad()
def round_weights_to_fp8(model: torch.nn.Module, config: QuantConfig) -> int:
    """Replace each weight `config` quantizes by its FP8 value in float; returns how many."""
    count = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and config.quantizes(name):
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
    args = parser.parse_args(argv)
    text = read_text(args.text)
    base, increases = None, {}
    for weight_scales in ("channel", "tensor"):
        model, tokenizer = load_model(None, dtype=torch.float32, device="cpu")  # float weights again
        if base is None:
            base = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows, progress=False)
        config = QuantConfig.from_name("fp8", weight_scales=weight_scales, activations="dynamic")
        count = round_weights_to_fp8(model, config)
        ppl = evaluate_perplexity(model, tokenizer, text, args.window, args.max_windows, progress=False)
        increases[weight_scales] = 100 * (ppl / base - 1)
        print(f"FP8 weights only, {weight_scales} scales ({count} linears): {ppl:.4f} against {base:.4f}, "
              f"{increases[weight_scales]:+.2f}%")  # fmt: skip
    return increases


if __name__ == "__main__":
    main()
