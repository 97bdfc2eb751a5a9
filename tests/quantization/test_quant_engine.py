"""A quantized model in the paged-KV engine: its greedy tokens are Hugging Face generate's on the same model."""

from __future__ import annotations

import pytest
import torch
from support import TINY_MODELS

from trtllm_compile.quantization import calibrate, quantize
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams


@pytest.mark.parametrize("fmt, kv_cache", [("int4_awq", None), ("fp8", "fp8")], ids=["int4_awq", "fp8_kv_fp8"])
def test_engine_runs_the_quantized_ops_like_generate(fmt, kv_cache):
    model = TINY_MODELS["llama"].build()
    model.generation_config.eos_token_id = None  # random weights: run every request to its length
    model.generation_config.pad_token_id = 0
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, progress=False)
    quantize(model, fmt, calibration=calibration, group_size=32, kv_cache=kv_cache)
    prompts = [[5, 9, 33, 2], [7, 8, 100, 200, 3, 4, 5]]
    with torch.no_grad():
        expected = [
            model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False)[0, len(p) :].tolist() for p in prompts
        ]
    outputs = LLM(model, max_batch_size=2, max_num_tokens=32).generate(
        prompts, SamplingParams(max_tokens=8, temperature=0.0)
    )
    assert [output.token_ids for output in outputs] == expected
