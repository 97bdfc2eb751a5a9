"""Small graphs through the converters: trace a function (or export a module with dynamic dims), convert it into
a network, and read back layer types and output shapes; optionally build it."""

from __future__ import annotations

from collections import Counter

import torch

from trtllm_compile.capture import export_model, trace_aten
from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.network import ConvertedNetwork, convert_graph

# Small engines: every test build uses these limits (seconds per build on two CPU cores).
MAX_BATCH = 2
MAX_SEQ = 32


def new_network():
    trt = flavour.require_trt()
    builder = trt.Builder(flavour.trt_logger())
    return builder, builder.create_network(flavour.network_flags())


def convert_fn(fn, *args) -> ConvertedNetwork:
    """`fn(*args)` traced with static shapes (graph inputs: the tensors in `args`)."""
    gm = trace_aten(fn, args)
    builder, network = new_network()
    converted = convert_graph(gm, network)
    converted.graph_module, converted.builder = gm, builder  # kept for `builds` and for inspecting the graph
    return converted


class _Call(torch.nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


def convert_module(module_or_fn, args: tuple, dynamic_shapes=None) -> ConvertedNetwork:
    """Export (weights frozen as constants, optional dynamic dims) and convert."""
    module = module_or_fn
    if not isinstance(module, torch.nn.Module):
        module = _Call(module_or_fn)
        dynamic_shapes = (dynamic_shapes,) if dynamic_shapes is not None else None  # forward(*args)
    gm = export_model(module, args, dynamic_shapes=dynamic_shapes).graph_module
    builder, network = new_network()
    converted = convert_graph(gm, network)
    converted.graph_module, converted.builder = gm, builder
    return converted


def layer_types(converted: ConvertedNetwork) -> Counter:
    return Counter(converted.layer_counts())


def output_shapes(converted: ConvertedNetwork) -> list[tuple[int, ...]]:
    network = converted.network
    return [tuple(network.get_output(i).shape) for i in range(network.num_outputs)]


def output_dtypes(converted: ConvertedNetwork) -> list[torch.dtype]:
    from trtllm_compile.tensorrt.impl.tensors import torch_dtype

    network = converted.network
    return [torch_dtype(network.get_output(i).dtype) for i in range(network.num_outputs)]


def builds(converted: ConvertedNetwork, max_size: int = 8) -> bool:
    """Build the network with every dynamic dim in [1, max_size]: TensorRT's own checks (types, shapes, layer
    constraints) run at build time."""
    builder, network = converted.builder, converted.network
    config = builder.create_builder_config()
    flavour.set_compute_target(config, flavour.DEFAULT_SM)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        low = [1 if d == -1 else d for d in tensor.shape]
        high = [max_size if d == -1 else d for d in tensor.shape]
        profile.set_shape(tensor.name, low, high, high)
    config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config) is not None
