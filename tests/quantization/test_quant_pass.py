"""quantize_linear / quantize_kv_cache: quantizing a graph captured from an unquantized model."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from quant_support import rel_err
from support import LAYERS, TINY_MODELS

from trtllm_compile import CompileConfig
from trtllm_compile import backend as backend_module
from trtllm_compile.backend import make_backend
from trtllm_compile.quantization import FORMATS, QuantConfig, calibrate, quantize

# The pass and quantize() share the numerics (same scales, same folds, same rounding); float32 rounds a few steps
# in another order (up_proj's rows divided by down_proj's 1/s after or before its columns are scaled).
PATHS_RTOL = 1e-5
# INT8 SmoothQuant rounds activations per token: a one-ulp difference before the rounding can move an int8 code a
# step, and the step spreads through the later GEMMs. On the Intel Xeon of CI, one code flipped at the first o_proj
# of multi-head attention (x / s 7.6e-5 apart, at a .5 tie) became 3, 27, ... flips and logits 2.2e-3 apart (Gemma:
# 1.0e-3 on an AMD EPYC). A wrong fold is two orders larger: V's rows left undivided measured 0.75, divided by the
# reversed s 0.21 (quantization error against the float model: 9e-3 to 4.4e-2).
INT8_PATHS_RTOL = 1e-2
QUANT_OPS = {"trtllm.fp8_linear.default", "trtllm.int8_linear.default", "trtllm.int4_linear.default"}


@pytest.fixture
def graphs(monkeypatch):
    """The graph modules the trtllm backend builds, in order."""
    built = []
    compile_graph = backend_module.compile_graph

    def recording(gm, example_inputs, config):
        compiled = compile_graph(gm, example_inputs, config)
        built.append(compiled.graph_module)
        return compiled

    monkeypatch.setattr(backend_module, "compile_graph", recording)
    return built


def _setup(arch: str):
    model = TINY_MODELS[arch].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    return model, windows, calibrate(model, windows=windows, samples=48, grams=True, progress=False)


def _compile(model, windows, qconfig, disable=()):
    options = CompileConfig(quantization=qconfig, disable_passes=frozenset(disable))
    with torch.no_grad():
        return torch.compile(copy.deepcopy(model), backend=make_backend(options))(windows[:1]).logits


def _counts(gm) -> Counter:
    return Counter(str(n.target) for n in gm.graph.nodes if n.op == "call_function")


CASES = [("llama", fmt) for fmt in sorted(FORMATS)] + [("qwen2", "int4_awq"), ("gemma3", "int8_sq")]


@pytest.mark.parametrize("arch, fmt", CASES)  # Gemma: norms scale by (1 + w), the fold must follow
def test_every_gemm_but_the_lm_head_is_quantized_as_quantize_does(graphs, arch, fmt):
    model, windows, calibration = _setup(arch)
    qconfig = QuantConfig.from_name(fmt, group_size=32, kv_cache="fp8").with_calibration(calibration)
    actual = _compile(model, windows, qconfig)
    counts = _counts(graphs[-1])
    # per layer: fused Q/K/V, o_proj, fused gate/up, down_proj; the LM head stays a float GEMM
    assert sum(counts[op] for op in QUANT_OPS) == 4 * LAYERS
    assert counts["aten.linear.default"] == 1
    assert counts["trtllm.fp8_qdq.default"] == 2 * LAYERS  # K and V of every layer

    # AWQ / SmoothQuant's 1/s: into the norms (Q/K/V, gate/up) and up_proj's rows (down_proj), multiplied only for
    # o_proj (its input comes from attention)
    multiplies = [n for n in graphs[-1].graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    smoothed = [n for n in multiplies if "quant_input_multiplier" in str(n.args[1])]
    assert len(smoothed) == (LAYERS if fmt in ("int8_sq", "int4_awq") else 0)

    with torch.no_grad():
        expected = quantize(copy.deepcopy(model), qconfig, calibration=calibration)(windows[:1]).logits
    assert rel_err(actual, expected) <= (INT8_PATHS_RTOL if fmt == "int8_sq" else PATHS_RTOL)


@pytest.mark.parametrize(
    "kv_cache, use_cache, folded", [(None, False, True), ("fp8", False, False), (None, True, False)],
    ids=["folded", "fp8_kv_cache", "v_is_returned"],
)  # fmt: skip
@pytest.mark.parametrize("fmt", ["int8_sq", "int4_awq"])
def test_o_proj_scale_folds_into_v_rows_of_multi_head_attention(graphs, fmt, kv_cache, use_cache, folded):
    """With a KV head per query head, o_proj's 1/s divides V's rows of the fused Q/K/V GEMM (as quantize() divides
    v_proj's, in every case): no multiply is left. Not before an FP8 KV cache (V's calibrated scale), nor when the
    graph returns V in a Hugging Face cache (the next step's graph, which concatenates the cache, cannot fold)."""
    model = TINY_MODELS["llama"].with_config(num_key_value_heads=4, use_cache=use_cache).build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, grams=True, progress=False)
    qconfig = QuantConfig.from_name(fmt, group_size=32, kv_cache=kv_cache).with_calibration(calibration)
    actual = _compile(model, windows, qconfig)
    multiplies = [n for n in graphs[-1].graph.nodes if n.target == torch.ops.aten.mul.Tensor]
    smoothed = [n for n in multiplies if "quant_input_multiplier" in str(n.args[1])]
    assert len(smoothed) == (0 if folded else LAYERS)
    with torch.no_grad():
        expected = quantize(copy.deepcopy(model), qconfig, calibration=calibration)(windows[:1]).logits
    assert rel_err(actual, expected) <= (INT8_PATHS_RTOL if fmt == "int8_sq" else PATHS_RTOL)


@pytest.mark.parametrize(
    "exclude, quantized, left",
    [((), 4 * LAYERS + 1, 0), (("lm_head", "*.down_proj"), 3 * LAYERS, 1 + LAYERS)],
    ids=["nothing_excluded", "lm_head_and_down_proj"],
)
def test_exclusion_is_configurable(graphs, exclude, quantized, left):
    model, windows, calibration = _setup("llama")
    _compile(model, windows, QuantConfig.from_name("fp8", exclude=exclude).with_calibration(calibration))
    counts = _counts(graphs[-1])
    assert counts["trtllm.fp8_linear.default"] == quantized
    assert counts["aten.linear.default"] == left


def test_unfused_linears_share_their_input_scale(graphs):
    """Without fuse_gemms, Q, K and V are three GEMMs: smoothed together, folded into their norm once."""
    model, windows, calibration = _setup("llama")
    qconfig = QuantConfig.from_name("int8_sq").with_calibration(calibration)
    fused = _compile(model, windows, qconfig)
    unfused = _compile(model, windows, qconfig, disable={"fuse_gemms"})
    assert _counts(graphs[-1])["trtllm.int8_linear.default"] == 7 * LAYERS
    assert rel_err(unfused, fused) <= PATHS_RTOL


def test_without_quantization_options_the_passes_do_nothing(graphs):
    model, windows, _ = _setup("llama")
    _compile(model, windows, None)
    assert not QUANT_OPS & set(_counts(graphs[-1]))


def test_a_quantized_model_compiles_to_the_same_quantized_ops(graphs):
    """quantize() first, torch.compile(backend="trtllm") after: the graph runs the QuantLinears' ops."""
    model, windows, calibration = _setup("llama")
    quantize(model, "int4_awq", calibration=calibration, group_size=32, kv_cache="fp8")
    with torch.no_grad():
        expected = model(windows[:1]).logits
    actual = _compile(model, windows, None)
    counts = _counts(graphs[-1])
    assert counts["trtllm.int4_linear.default"] == 7 * LAYERS and counts["trtllm.fp8_qdq.default"] == 2 * LAYERS
    assert counts["trtllm.attention.default"] == LAYERS  # the FP8-KV wrapper still matches as attention
    assert rel_err(actual, expected) <= PATHS_RTOL
