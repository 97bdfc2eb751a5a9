"""A model whose attention the pipeline does not know still compiles and runs correctly; the report says what
stayed in PyTorch and why."""

import torch
import transformers
from support import FP32_REL_TOL, rel_err

import trtllm_compile


def _bloom():
    # BLOOM adds ALiBi biases through baddbmm instead of rotating q/k: no attention pattern covers that.
    config = transformers.BloomConfig(vocab_size=256, hidden_size=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    return transformers.BloomForCausalLM(config).eval()


def test_unmatched_attention_runs_in_pytorch_and_is_reported():
    model = _bloom()
    input_ids = torch.randint(0, 256, (2, 7))
    with torch.no_grad():
        expected = model(input_ids).logits

    compiled = trtllm_compile.compile(model)
    actual = compiled(input_ids).logits

    assert rel_err(actual, expected) <= FP32_REL_TOL
    report = compiled.report
    assert report.matches["attention"] == 0
    assert report.matches["norm"] == 2 * 2 + 2  # ln per sublayer, embedding norm and final norm still fuse
    attention_fallbacks = [f for f in report.fallbacks if f.family == "attention"]
    assert len(attention_fallbacks) == 2  # one softmax per layer, with its reason
    assert all("softmax" in f.reason for f in attention_fallbacks)
    assert "fallbacks (" in str(report) and "attention" in str(report)
