"""FX graph -> TensorRT `INetworkDefinition`: walk the nodes in order, convert each with its registered converter.

Placeholders become network inputs (symbolic dims as -1, bounded later by optimization profiles), `get_attr`
weights become named constants where they are used (refittable by name), outputs are marked with their names.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx

from trtllm_compile.tensorrt import converters
from trtllm_compile.tensorrt.converters.registry import find_converter, target_name
from trtllm_compile.tensorrt.impl.context import ConversionContext, FrozenTensor
from trtllm_compile.tensorrt.impl.tensors import cast, itensor, torch_dtype, trt_dtype
from trtllm_compile.tensorrt.trt import require_trt

logger = logging.getLogger(__name__)

CONVERTERS_DIR = converters.__path__[0]


class UnsupportedOperatorError(NotImplementedError):
    """A node that no TensorRT converter handles."""


@dataclass
class ConvertedNetwork:
    network: object
    context: ConversionContext
    input_names: list[str]
    output_names: list[str]
    dynamic_inputs: dict[str, list[object]] = field(default_factory=dict)  # name -> per-dim size or SymInt

    def layer_counts(self) -> dict[str, int]:
        return layer_counts(self.network)


def layer_counts(network) -> dict[str, int]:
    """How many layers of each LayerType the network holds (e.g. {"ATTENTION_INPUT": 30, ...})."""
    counts = Counter(network.get_layer(i).type.name for i in range(network.num_layers))
    return dict(sorted(counts.items()))


def unsupported_nodes(gm: torch.fx.GraphModule) -> list[tuple[torch.fx.Node, str]]:
    """Every call node without a converter (or that its validator refuses), with the reason."""
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function":
            spec, reason = find_converter(node)
            if spec is None:
                found.append((node, reason))
        elif node.op in ("call_module", "call_method"):
            found.append((node, f"{node.op} nodes are not converted"))
    return found


def unsupported_error(gm: torch.fx.GraphModule, problems: list[tuple[torch.fx.Node, str]]) -> UnsupportedOperatorError:
    lines = []
    for node, reason in problems[:8]:
        where = node.meta.get("nn_module_stack") or {}
        module = next(reversed(where.values()), ("", ""))[0] if where else ""
        lines.append(f"  {reason} (node %{node.name}{f' in {module}' if module else ''})")
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    return UnsupportedOperatorError(
        f"{len(problems)} node(s) cannot be lowered to TensorRT:\n" + "\n".join(lines) + more + "\n"
        "pass partition=True to run them in PyTorch between TensorRT engines, or add a converter with "
        f"@converter(...) in {CONVERTERS_DIR}/"
    )


def _sizes(value: torch.Tensor, specialize: dict[str, int]) -> list:
    """The input's sizes with specialized symbols replaced by their value."""
    return [specialize.get(str(d), d) if isinstance(d, torch.SymInt) else d for d in value.shape]


def convert_graph(
    gm: torch.fx.GraphModule,
    network,
    output_names: list[str] | None = None,
    constants: dict[str, FrozenTensor] | None = None,
    specialize: dict[str, int] | None = None,
) -> ConvertedNetwork:
    """Fill `network` from `gm`; raises UnsupportedOperatorError naming every node that cannot convert.

    `constants` names placeholders to bind to frozen tensors instead of network inputs (a partition's weights).
    `specialize` fixes symbolic sizes (by symbol name) to ints: the decode engine is the step graph with one token.
    """
    constants = constants or {}
    problems = unsupported_nodes(gm)
    if problems:
        raise unsupported_error(gm, problems)
    require_trt()
    ctx = ConversionContext(network, gm, specialized=dict(specialize or {}))
    outputs: list[str] = []
    values: dict[torch.fx.Node, object] = {}
    inputs, dynamic = [], {}
    _skip_in_place_symbols(gm, ctx)
    for node in gm.graph.nodes:
        ctx.node = node
        if node.op == "placeholder" and node.name in constants:
            values[node] = constants[node.name]
        elif node.op == "placeholder":
            val = node.meta["val"]
            sizes = _sizes(val, ctx.specialized)
            shape = tuple(s if isinstance(s, int) else -1 for s in sizes)
            values[node] = network.add_input(node.name, trt_dtype(val.dtype), shape)
            for dim, size in enumerate(sizes):
                if isinstance(size, torch.SymInt):
                    ctx.input_sizes.setdefault(str(size.node.expr), (values[node], dim))
            inputs.append(node.name)
            dynamic[node.name] = sizes
        elif node.op == "get_attr":
            tensor = gm
            for part in node.target.split("."):
                tensor = getattr(tensor, part)
            values[node] = FrozenTensor(node.target, tensor)
        elif node.op == "call_function":
            values[node] = _convert_node(ctx, node, values)
        elif node.op == "output":
            outputs = _mark_outputs(ctx, node, values, output_names)
    for name, weights in ctx.named_weights.items():
        network.set_weights_name(weights, name)
    return ConvertedNetwork(network, ctx, inputs, outputs, dynamic)


def _skip_in_place_symbols(gm: torch.fx.GraphModule, ctx: ConversionContext) -> None:
    """Symbolic sizes that in-place (KV-cache) inputs share, e.g. the batch, stay computed from the tensor at hand:
    read from another input, tensorrt_rtx's compiler backend crashed at build time (seen with 1.7.1)."""
    for node in gm.graph.nodes:
        if node.op == "placeholder" and node.meta.get("kv_cache"):
            for size in node.meta["val"].shape:
                if isinstance(size, torch.SymInt):
                    ctx.input_sizes[str(size.node.expr)] = None


def _convert_node(ctx: ConversionContext, node: torch.fx.Node, values: dict):
    spec, _ = find_converter(node)
    args = torch.fx.node.map_arg(node.args, lambda n: values[n])
    kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n])
    first_layer = ctx.net.num_layers
    try:
        result = spec.fn(ctx, node, *args, **kwargs)
    except Exception as error:
        raise RuntimeError(f"converting %{node.name} ({target_name(node)}) failed: {error}") from error
    result = _match_dtypes(ctx, node, result)
    for i in range(first_layer, ctx.net.num_layers):  # layer names lead back to the graph node
        ctx.net.get_layer(i).name = f"{node.name}.{i - first_layer}"
    return result


def _match_dtypes(ctx: ConversionContext, node: torch.fx.Node, result):
    """Cast a converter's output to the dtype torch gives the node, so the network types follow the graph."""
    val = node.meta.get("val")
    if isinstance(result, tuple) and isinstance(val, tuple | list):
        return tuple(_match_dtype(ctx, r, v) for r, v in zip(result, val, strict=True))
    return _match_dtype(ctx, result, val)


def _match_dtype(ctx: ConversionContext, result, val):
    trt = require_trt()
    if isinstance(result, trt.ITensor) and isinstance(val, torch.Tensor) and torch_dtype(result.dtype) != val.dtype:
        return cast(ctx, result, val.dtype)
    return result


def _mark_outputs(ctx: ConversionContext, node: torch.fx.Node, values: dict, names: list[str] | None) -> list[str]:
    results = node.args[0]
    results = list(results) if isinstance(results, list | tuple) else [results]
    names = names or [f"output_{i}" for i in range(len(results))]
    if len(names) != len(results):
        raise ValueError(f"{len(results)} graph outputs but {len(names)} output names")
    marked: set[str] = set()
    for result, name in zip(results, names, strict=True):
        tensor = itensor(ctx, values[result])
        if tensor.is_network_input or tensor.name in marked:  # one tensor cannot be two outputs
            tensor = ctx.net.add_identity(tensor).get_output(0)
        marked.add(name)
        tensor.name = name
        ctx.net.mark_output(tensor)
    return list(names)
