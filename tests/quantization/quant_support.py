"""Shared settings of the quantization tests: corpus files, evaluation sizes, and the tolerances, stated once."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

# Real-weights runs (SmolLM2-135M, fp32 on 2 CPU cores): calibrate on CAL_WINDOWS windows of c4, evaluate on
# the first EVAL_WINDOWS windows of wiki (a different corpus, so held out by construction). 16 x 512 tokens
# keeps the five evaluations (float + four formats) within the suite's few-minute budget; the perplexity of
# 8k tokens is stable to a few tenths of a percent, well below the gaps the thresholds test.
WINDOW = 512
CAL_WINDOWS = 16
EVAL_WINDOWS = 16
AWQ_SAMPLES = 512  # tokens per linear input kept for the AWQ search
AWQ_GRID = 10  # alpha in {0, 0.1, ..., 0.9}: half the paper's grid, half the search time
# The quantized SmolLM2s the tests compare, by label: (format, QuantConfig options).
VARIANTS = {
    "fp8": ("fp8", {}),
    "fp8+gptq": ("fp8", {"rounding": "gptq"}),
    "int8_sq": ("int8_sq", {}),
    "int4_awq": ("int4_awq", {"awq_grid": AWQ_GRID}),
    "int4_gptq": ("int4_gptq", {}),
    "int4_rtn": ("int4_rtn", {}),
}


# Op references against a float64 dequantize-and-multiply: both see identical quantized operands, so they
# differ only by float32 accumulation order (1e-5 relative) and the final cast to the activation dtype
# (one ulp: 2**-8 for bf16).
REF_RTOL = {torch.float32: 1e-5, torch.bfloat16: 2**-7}
# CUDA fast paths against the references: same operands; cuBLASLt / tinygemm accumulate in another order and
# round the output to bf16 (2**-8) before any cast, and tinygemm rounds its scales to bf16 (another 2**-8); the
# INT4 Triton kernels keep the dequantized weights exact where the reference rounds each to bf16 (up to 2**-9).
GPU_RTOL = {"fp8": 2e-2, "int8": 2e-2, "int4": 3e-2}


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return ((actual.double() - expected.double()).abs().max() / expected.double().abs().max()).item()


def corpus_file(name: str) -> Path:
    """A text of exllamav2's calibration data (located without importing the package)."""
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("exllamav2's text corpus is not installed: pip install --no-deps exllamav2==0.3.2")
    path = Path(spec.submodule_search_locations[0]) / "conversion" / "standard_cal_data" / name
    if not path.exists():
        pytest.skip(f"{path} is missing; reinstall exllamav2")
    return path
