"""The runtime's step graph quantized through the compile options (`LLM(..., compile=CompileConfig(quantization=...))`):
the whole-model export names weights under CausalLMStep, and every GEMM must still resolve to its calibrated module
(the LM head too when not excluded: logits are then selected before a quantized GEMM); greedy tokens equal the
engine running the same model quantized module by module."""

from __future__ import annotations

import copy

import pytest
import torch
from support import LAYERS, TINY_MODELS

from trtllm_compile import CompileConfig
from trtllm_compile.quantization import FORMATS, QuantConfig, calibrate, quantize
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams

PROMPTS = [[5, 9, 33, 2], [7, 8, 100, 200, 3, 4, 5]]
ENGINE = dict(max_batch_size=2, max_num_tokens=32)


@pytest.mark.parametrize(
    "fmt, exclude", [(fmt, ("lm_head",)) for fmt in sorted(FORMATS)] + [("fp8", ()), ("int4_awq", ())]
)
def test_compile_option_quantizes_the_step_graph_like_quantize(fmt, exclude):
    model = TINY_MODELS["llama"].build()
    model.generation_config.eos_token_id = None  # random weights: run every request to its length
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, grams=True, progress=False)
    qconfig = QuantConfig.from_name(fmt, group_size=32, exclude=exclude).with_calibration(calibration)
    params = SamplingParams(max_tokens=8, temperature=0.0)

    compiled = LLM(model, compile=CompileConfig(quantization=qconfig), **ENGINE)
    rewrites = {p.name: p.num_rewrites for p in compiled.engine.report.passes}
    # fused Q/K/V, o_proj, fused gate/up, down_proj per layer; the LM head too unless excluded
    assert rewrites["quantize_linear"] == 4 * LAYERS + (not exclude)
    expected = LLM(quantize(copy.deepcopy(model), qconfig, calibration=calibration), **ENGINE).generate(PROMPTS, params)
    assert [o.token_ids for o in compiled.generate(PROMPTS, params)] == [o.token_ids for o in expected]
