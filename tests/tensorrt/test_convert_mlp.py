import pytest
import torch
from network_support import builds, convert_fn, layer_types, output_shapes

from trtllm_compile.capture import trace_aten
from trtllm_compile.tensorrt.converters import find_converter

mlp_activation = torch.ops.trtllm.mlp_activation


def test_swiglu_is_sigmoid_times_gate_times_up():
    gate, up = torch.randn(2, 3, 32, dtype=torch.float16), torch.randn(2, 3, 32, dtype=torch.float16)
    converted = convert_fn(lambda g, u: mlp_activation(g, u, "silu"), gate, up)
    layers = layer_types(converted)
    assert layers["ACTIVATION"] == 1 and layers["ELEMENTWISE"] == 2
    assert output_shapes(converted) == [(2, 3, 32)]
    assert builds(converted)


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_ungated_activations_are_one_layer(activation):
    converted = convert_fn(lambda g: mlp_activation(g, None, activation), torch.randn(2, 3, 32))
    assert layer_types(converted) == {"ACTIVATION": 1}
    assert builds(converted)


def test_unknown_activation_is_refused():
    # The op's reference would fail on an unknown name, so the node is made by hand.
    gm = trace_aten(lambda g: mlp_activation(g, None, "relu"), (torch.randn(2, 4),))
    node = next(n for n in gm.graph.nodes if n.target is mlp_activation.default)
    node.args = (node.args[0], None, "swish_v2")
    spec, reason = find_converter(node)
    assert spec is None and "swish_v2" in reason
