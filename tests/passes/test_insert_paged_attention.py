"""insert_paged_attention with FP8 K/V: the fp8_qdq pairs in front of attention become an FP8 cache write/read.

When every layer's K and V are fp8_qdq'd, the pass hands paged_attention the raw K/V and both scales, drops the
quantize-dequantize, and the cache geometry says float8_e4m3fn; the graph then computes exactly what the
simulated graph (qdq kept, cache in the model dtype) does. When only some layers are, the cache (one tensor,
one dtype) stays in the model dtype and the rounding stays simulated, with a warning."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from trtllm_compile.passes import insert_paged_attention as pass_module
from trtllm_compile.runtime.step_graph import CacheGeometry

ops = torch.ops.trtllm
HEADS, KV_HEADS, HEAD_DIM = 4, 2, 16
SCALES = [torch.tensor(s / 448) for s in (2.0, 2.5, 1.5, 3.0)]  # k0, v0, k1, v1


def _two_layers(quantized_layers: tuple[bool, bool]):
    def fn(q, k, v):
        out = q
        for layer, quantized in enumerate(quantized_layers):
            k_in, v_in = k * (layer + 1), v - layer
            if quantized:
                k_in, v_in = ops.fp8_qdq(k_in, SCALES[2 * layer]), ops.fp8_qdq(v_in, SCALES[2 * layer + 1])
            out = ops.attention(out, k_in, v_in, None, HEAD_DIM**-0.5, True, -1, 0.0)
        return out

    return fn


def _args(tokens: int = 5):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(1, HEADS, tokens, HEAD_DIM, generator=gen)
    return q, *(torch.randn(1, KV_HEADS, tokens, HEAD_DIM, generator=gen) for _ in range(2))


def _paged(trace, quantized_layers, monkeypatch=None):
    gm = trace(_two_layers(quantized_layers), *_args())
    if monkeypatch is not None:  # the simulated FP8 cache the pass replaces
        monkeypatch.setattr(pass_module, "_fp8_kv", lambda node: None)
    assert pass_module.insert_paged_attention(gm, SimpleNamespace(sliding_windows=None)) == 2
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm, [n for n in gm.graph.nodes if n.target is ops.paged_attention.default]


def _step(gm, dtype):
    """One prefill of 5 tokens into a cache of `dtype` (blocks of 4, the sequence in blocks 2 and 0)."""
    cache = torch.zeros(2, 2, 3, 4, KV_HEADS, HEAD_DIM, dtype=dtype)
    slots = torch.tensor([8, 9, 10, 11, 0])
    metadata = (slots, torch.tensor([[2, 0]], dtype=torch.int32), torch.tensor([5], dtype=torch.int32))
    out = gm(*_args(), cache, *metadata, torch.tensor([0, 5], dtype=torch.int32))
    return out, cache


def test_qdq_becomes_an_fp8_cache_with_the_same_numerics(trace, op_counts, monkeypatch):
    gm, paged = _paged(trace, (True, True))
    assert op_counts(gm)["trtllm.fp8_qdq"] == 0
    scales = [getattr(gm, n.kwargs[s].target) for n in paged for s in ("k_scale", "v_scale")]
    assert [s.item() for s in scales] == [s.item() for s in SCALES]
    assert CacheGeometry.of(paged) == CacheGeometry(2, KV_HEADS, HEAD_DIM, torch.float8_e4m3fn)

    simulated, simulated_paged = _paged(trace, (True, True), monkeypatch)
    assert op_counts(simulated)["trtllm.fp8_qdq"] == 4
    assert CacheGeometry.of(simulated_paged).dtype == torch.float32
    actual, fp8_cache = _step(gm, torch.float8_e4m3fn)
    expected, float_cache = _step(simulated, torch.float32)
    assert torch.equal(actual, expected)
    for which, scale in enumerate(SCALES):  # layer-major: k0, v0, k1, v1
        layer, kv = divmod(which, 2)
        assert torch.equal(fp8_cache[layer, kv].float() * scale, float_cache[layer, kv])


@pytest.mark.parametrize("quantized_layers", [(True, False), (False, False)], ids=["mixed", "none"])
def test_a_cache_with_unquantized_layers_stays_in_the_model_dtype(trace, op_counts, caplog, quantized_layers):
    with caplog.at_level(logging.WARNING, logger=pass_module.__name__):
        gm, paged = _paged(trace, quantized_layers)
    assert all("k_scale" not in n.kwargs for n in paged)
    assert op_counts(gm)["trtllm.fp8_qdq"] == 2 * sum(quantized_layers)
    assert CacheGeometry.of(paged).dtype == torch.float32
    assert ("KV cache stays in the model dtype" in caplog.text) == any(quantized_layers)
