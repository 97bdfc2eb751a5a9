"""Calibration-based quantization: FP8 and INT8 SmoothQuant W8A8, INT4 AWQ / GPTQ / RTN weight-only, FP8 KV cache.

    calibration = calibrate(model, tokenizer, texts)                     # observers on every linear input, K, V
    model = quantize(model, "int4_awq", calibration=calibration)        # nn.Linear -> QuantLinear (trtllm ops)
    evaluate_perplexity(model, tokenizer, text, window=512, max_windows=16)
    save_quantized(model, "out", tokenizer); model = load_quantized("out")

Or, for a graph captured from the float model: the QUANTIZE-stage passes (passes/quantize_linear.py,
passes/quantize_kv_cache.py) read `QuantConfig.from_name(fmt).with_calibration(calibration)` from the
compile options.
"""

from trtllm_compile.quantization.apply import quantize
from trtllm_compile.quantization.calibration import Calibration, calibrate
from trtllm_compile.quantization.checkpoint import load_quantized, save_quantized
from trtllm_compile.quantization.config import FORMATS, QuantConfig
from trtllm_compile.quantization.perplexity import evaluate_perplexity
from trtllm_compile.quantization.text import read_text, token_windows

__all__ = [
    "FORMATS",
    "Calibration",
    "QuantConfig",
    "calibrate",
    "evaluate_perplexity",
    "load_quantized",
    "quantize",
    "read_text",
    "save_quantized",
    "token_windows",
]
