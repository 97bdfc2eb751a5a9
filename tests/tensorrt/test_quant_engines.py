"""Quantized TensorRT engines (tensorrt/converters/quant.py): FP8, INT8 SmoothQuant and INT4 AWQ GEMMs and the FP8
K/V round trip become Q/DQ layers over weights stored in their quantized type, and the engines build on CPU.

The engines cannot execute here (tensorrt_rtx builds for an explicit compute capability on a machine without a
GPU, and cannot run engines without one): these tests check structure only, i.e. that every GEMM the QUANTIZE
pass rewrote became Q/DQ layers over a quantized constant and that TensorRT accepts the network. Numerics are
the ops' references (tests/quantization), which the Q/DQ graphs follow by construction.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from network_support import MAX_BATCH, MAX_SEQ, builds, convert_module, layer_types
from support import LAYERS, TINY_MODELS

from trtllm_compile.quantization import QuantConfig, calibrate
from trtllm_compile.quantization.formats import QuantizedWeight
from trtllm_compile.quantization.modules import QuantLinear
from trtllm_compile.tensorrt import UnsupportedOperatorError, build
from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.export import export_step_graph
from trtllm_compile.tensorrt.network import convert_graph

GROUP = 32
# The QUANTIZE pass runs after fuse_gemms: per decoder layer Q/K/V (one input) and gate/up (one input) are one GEMM
# each, o_proj and down_proj one each; the LM head is excluded by default.
FUSED_INPUTS = [("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",)]
# format -> (quantized weight type, activation Q/DQ per GEMM); QuantConfig options: static W8A8 activations.
FORMATS = {
    "fp8": ("FP8", 1, {}),
    "int8_sq": ("INT8", 1, {"activations": "static"}),
    "int4_awq": ("INT4", 0, {"group_size": GROUP}),
}


def quantized_gemms(model) -> int:
    """GEMMs the pass quantizes, from the model's linears: every decoder linear, fused by shared input."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert {n for group in FUSED_INPUTS for n in group} <= names  # the Llama layout FUSED_INPUTS describes
    linears = sum(1 for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layers." in name)
    per_layer = sum(len(group) for group in FUSED_INPUTS)
    assert linears == per_layer * LAYERS
    return len(FUSED_INPUTS) * linears // per_layer


@pytest.fixture(scope="module")
def calibrated():
    model = TINY_MODELS["llama"].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    return model, calibrate(model, windows=windows, samples=48, progress=False, kv_cache=True)


def _qconfig(calibrated, fmt: str, kv_cache: str | None):
    _, calibration = calibrated
    return QuantConfig.from_name(fmt, kv_cache=kv_cache, **FORMATS[fmt][2]).with_calibration(calibration)


CASES = [("fp8", "fp8"), ("int8_sq", None), ("int4_awq", None)]


@pytest.mark.parametrize("fmt, kv_cache", CASES, ids=["fp8_kv_fp8", "int8_sq", "int4_awq"])
def test_quantized_engines_build_with_one_qdq_per_gemm(calibrated, engine_cache, fmt, kv_cache):
    model, _ = calibrated
    _, activation_qdq, _ = FORMATS[fmt]
    gemms = quantized_gemms(model)
    kv_qdq = 2 * LAYERS if kv_cache else 0  # K and V of every layer
    result = build(
        model,
        max_batch_size=MAX_BATCH,
        max_seq_len=MAX_SEQ,
        cache_dir=engine_cache,
        progress=False,
        quantization=_qconfig(calibrated, fmt, kv_cache),
    )
    rewrites = {p.name: p.num_rewrites for p in result.report.passes}
    assert rewrites["quantize_linear"] == gemms
    assert rewrites["quantize_kv_cache"] == (LAYERS if kv_cache else 0)
    assert not result.cache_hit and set(result.engines) == {"prefill", "decode"} and result.torch_nodes == []
    for engine in result.engines.values():
        counts = Counter(engine.layer_counts)
        assert counts["QUANTIZE"] == activation_qdq * gemms + kv_qdq
        assert counts["DEQUANTIZE"] == (1 + activation_qdq) * gemms + kv_qdq  # + one per quantized weight
        assert engine.path.stat().st_size > 0


@pytest.mark.parametrize("fmt, kv_cache", CASES, ids=["fp8_kv_fp8", "int8_sq", "int4_awq"])
def test_weights_are_constants_of_the_quantized_type(calibrated, fmt, kv_cache):
    model, _ = calibrated
    weight_type = FORMATS[fmt][0]
    graph = export_step_graph(
        model, torch.float16, MAX_BATCH, MAX_SEQ, MAX_SEQ, quantization=_qconfig(calibrated, fmt, kv_cache)
    )
    trt = flavour.require_trt()
    network = trt.Builder(flavour.trt_logger()).create_network(flavour.network_flags())
    convert_graph(graph.graph_module, network)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    weights = [layer.get_output(0) for layer in layers if layer.type == trt.LayerType.CONSTANT]
    assert Counter(w.dtype.name for w in weights)[weight_type] == quantized_gemms(model)
    # each quantized constant is read by a DQ (the weight's), never a float GEMM or a cast
    quantized = {w.name for w in weights if w.dtype.name == weight_type}
    inputs = [(layer, layer.get_input(k)) for layer in layers for k in range(layer.num_inputs)]
    readers = Counter(layer.type.name for layer, x in inputs if x is not None and x.name in quantized)
    assert readers == {"DEQUANTIZE": quantized_gemms(model)}


def test_dynamic_activation_scales_name_the_static_option(calibrated, engine_cache):
    model, _ = calibrated
    qconfig = QuantConfig.from_name("int8_sq").with_calibration(calibrated[1])  # int8_sq default: dynamic
    with pytest.raises(UnsupportedOperatorError, match='activations="static"'):
        build(
            model,
            max_batch_size=MAX_BATCH,
            max_seq_len=MAX_SEQ,
            cache_dir=engine_cache,
            progress=False,
            quantization=qconfig,
        )
    assert issubclass(UnsupportedOperatorError, NotImplementedError)


# --- one QuantLinear per converter: a small network that TensorRT builds -----------------------------------------


def _quant_linear(op: str, weight_scale_shape=(16,), zeros: bool = False) -> QuantLinear:
    n, k = 16, 64
    g = torch.Generator().manual_seed(0)
    if op == "int4_linear":
        packed = torch.randint(0, 256, (n, k // 2), dtype=torch.uint8, generator=g)
        scales = torch.rand(n, k // GROUP, generator=g)
        zero_points = torch.randint(0, 16, (n, k // GROUP), generator=g).float() if zeros else None
        quantized = QuantizedWeight(op, packed, scales, zeros=zero_points, group_size=GROUP)
    else:
        dtype = torch.float8_e4m3fn if op == "fp8_linear" else torch.int8
        weight = torch.randn(n, k, generator=g).mul(20).clamp(-127, 127).to(dtype)
        quantized = QuantizedWeight(
            op, weight, torch.rand(weight_scale_shape, generator=g), input_scale=torch.tensor(0.05)
        )
    return QuantLinear(k, n, quantized, bias=torch.randn(n, generator=g).half())


@pytest.mark.parametrize(
    "op, weight_scale_shape, zeros, weight_type, counts",
    [
        ("fp8_linear", (), False, "FP8", {"QUANTIZE": 1, "DEQUANTIZE": 2}),
        ("fp8_linear", (16,), False, "FP8", {"QUANTIZE": 1, "DEQUANTIZE": 2}),
        ("int8_linear", (16,), False, "INT8", {"QUANTIZE": 1, "DEQUANTIZE": 2}),
        ("int4_linear", None, False, "INT4", {"DEQUANTIZE": 1}),
        ("int4_linear", None, True, "INT4", {"DEQUANTIZE": 1}),
    ],
    ids=["fp8_per_tensor", "fp8_per_channel", "int8_per_channel", "int4_symmetric", "int4_zero_points"],
)
def test_convert_quant_linear(op, weight_scale_shape, zeros, weight_type, counts):
    module = _quant_linear(op, weight_scale_shape, zeros)
    x = torch.randn(2, 3, 64, dtype=torch.float16)
    batch = torch.export.Dim("batch", min=1, max=8)
    converted = convert_module(module, (x,), dynamic_shapes=({0: batch},))
    types = layer_types(converted)
    assert {kind: types[kind] for kind in counts} == counts and types.get("QUANTIZE", 0) == counts.get("QUANTIZE", 0)
    network = converted.network
    dq = [network.get_layer(i) for i in range(network.num_layers) if network.get_layer(i).type.name == "DEQUANTIZE"]
    assert weight_type in {layer.get_input(0).dtype.name for layer in dq}
    assert builds(converted)


class _RoundTrip(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(0.02), requires_grad=False)  # frozen into a constant

    def forward(self, x):
        return torch.ops.trtllm.fp8_qdq(x, self.scale)


def test_convert_fp8_qdq():
    converted = convert_module(_RoundTrip(), (torch.randn(2, 4, 8, dtype=torch.float16),))
    types = layer_types(converted)
    assert (types["QUANTIZE"], types["DEQUANTIZE"]) == (1, 1)
    assert builds(converted)
