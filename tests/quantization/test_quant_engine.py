"""A quantized model in the paged-KV engine: its greedy tokens are Hugging Face generate's on the same model, and
an FP8 KV cache is stored in FP8 while generating what the simulated (quantize-dequantize) one does."""

from __future__ import annotations

import copy

import pytest
import torch
from support import LAYERS, TINY_MODELS

from trtllm_compile import CompileConfig
from trtllm_compile.fx_utils import is_op
from trtllm_compile.passes import insert_paged_attention
from trtllm_compile.quantization import QuantConfig, calibrate, quantize
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
    llm = LLM(model, max_batch_size=2, max_num_tokens=32)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=8, temperature=0.0))
    assert [output.token_ids for output in outputs] == expected
    # kv_cache="fp8": the fp8_qdq the quantized attention emits becomes a real FP8 cache
    assert llm.engine.runner.kv_cache.dtype == (torch.float8_e4m3fn if kv_cache else torch.float32)


PROMPTS = [[5, 9, 33, 2], [7, 8, 100, 200, 3, 4, 5], [1, 2, 3]]
NUM_BLOCKS = 12


def _fp8_kv_engine(model, qconfig, monkeypatch=None) -> LLM:
    """An engine with a calibrated FP8 KV cache; with `monkeypatch`, the simulated one it replaces (the cache pass
    keeps fp8_qdq in front of paged attention and the cache stays in the model dtype)."""
    if monkeypatch is not None:
        monkeypatch.setattr(insert_paged_attention, "_fp8_kv", lambda node: None)
    llm = LLM(model, max_batch_size=2, max_num_tokens=32, block_size=4, num_blocks=NUM_BLOCKS,
              compile=CompileConfig(quantization=qconfig))  # fmt: skip
    if monkeypatch is not None:
        monkeypatch.undo()
    return llm


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_fp8_kv_cache_stores_fp8_and_generates_as_the_simulated_cache(monkeypatch, dtype, device):
    """QuantConfig(kv_cache="fp8") on an unquantized model: the engine's cache is float8_e4m3fn, 1 byte per value
    where the simulated cache (fp8_qdq before a cache in the model dtype) takes 4 (fp32) or 2 (fp16), and the
    greedy tokens are the simulated engine's (the op test shows both compute bit-identical attention). On a GPU
    the real cache is written by the quantizing KV-write kernel and read by the FP8 decode kernel."""
    model = TINY_MODELS["llama"].build(dtype=dtype).to(device)
    model.generation_config.eos_token_id = None
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=0, kv_cache=True, progress=False)
    qconfig = QuantConfig.from_name(None, kv_cache="fp8").with_calibration(calibration)
    real, simulated = _fp8_kv_engine(model, qconfig), _fp8_kv_engine(model, qconfig, monkeypatch)
    real_cache, simulated_cache = real.engine.runner.kv_cache, simulated.engine.runner.kv_cache
    assert real.engine.runner.step.geometry.dtype == real_cache.dtype == torch.float8_e4m3fn
    assert simulated_cache.dtype == dtype and real_cache.shape == simulated_cache.shape
    assert real_cache.nbytes * dtype.itemsize == simulated_cache.nbytes
    graphs = [llm.engine.runner.step.graph_module for llm in (real, simulated)]
    assert [_count(gm, torch.ops.trtllm.fp8_qdq.default) for gm in graphs] == [0, 2 * LAYERS]

    params = SamplingParams(max_tokens=8, temperature=0.0)
    tokens = [[o.token_ids for o in llm.generate(PROMPTS, params)] for llm in (real, simulated)]
    assert tokens[0] == tokens[1]
    if dtype == torch.float32:  # and they are Hugging Face generate's on the model quantized with kv_cache="fp8"
        hf = quantize(copy.deepcopy(model), None, calibration=calibration, kv_cache="fp8")
        with torch.no_grad():
            expected = [
                hf.generate(torch.tensor([p], device=device), max_new_tokens=8, do_sample=False, pad_token_id=0)[
                    0, len(p) :
                ].tolist()
                for p in PROMPTS
            ]
        assert tokens[0] == expected


def _count(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if is_op(n, target))
