"""Session fixtures of the quantization tests: one calibration and one float perplexity of SmolLM2, shared."""

from __future__ import annotations

import pytest
from quant_support import AWQ_SAMPLES, CAL_WINDOWS, EVAL_WINDOWS, VARIANTS, WINDOW, corpus_file


@pytest.fixture(scope="session")
def wiki_text() -> str:
    from trtllm_compile.quantization import read_text

    return read_text(corpus_file("wiki.utf8"))


@pytest.fixture(scope="session")
def smollm2_calibration(smollm2):
    """SmolLM2 calibrated once on c4 (with AWQ samples, GPTQ Gram matrices and K/V ranges): every format reuses
    it."""
    from trtllm_compile.quantization import calibrate, read_text

    model, tokenizer = smollm2
    text = read_text(corpus_file("c4.utf8"))
    return calibrate(
        model, tokenizer, text, window=WINDOW, max_windows=CAL_WINDOWS, samples=AWQ_SAMPLES, grams=True, progress=False
    )


@pytest.fixture(scope="session")
def quantized_smollm2(smollm2, smollm2_calibration):
    """label (of VARIANTS) -> SmolLM2 quantized so from the shared calibration, built once per session."""
    import copy

    from trtllm_compile.quantization import quantize

    model, _ = smollm2
    cache = {}

    def get(label: str):
        if label not in cache:
            fmt, options = VARIANTS[label]
            cache[label] = quantize(copy.deepcopy(model), fmt, calibration=smollm2_calibration, **options)
        return cache[label]

    return get


@pytest.fixture(scope="session")
def float_perplexity(smollm2, wiki_text) -> float:
    from trtllm_compile.quantization import evaluate_perplexity

    model, tokenizer = smollm2
    return evaluate_perplexity(model, tokenizer, wiki_text, WINDOW, EVAL_WINDOWS, progress=False)
