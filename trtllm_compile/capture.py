"""Capture: turn a Dynamo graph or a whole model into one canonical ATen graph with frozen weights.

Both paths trace to the *pre-dispatch* ATen IR (what `torch.export` produces): `aten.linear`,
`aten.scaled_dot_product_attention` and `aten.matmul` stay single nodes, so patterns stay small and
converters stay thin. Weights become `get_attr` constants ("frozen"), which lets the passes concatenate,
transpose and quantize them once at compile time instead of on every call.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.fx
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from trtllm_compile.fx_utils import add_constant

logger = logging.getLogger(__name__)


def trace_aten(fn, args, fake_mode=None) -> torch.fx.GraphModule:
    """Trace `fn(*args)` to pre-dispatch ATen. With `fake_mode`, `args` are its fake tensors/SymInts."""
    context = fake_mode if fake_mode is not None else contextlib.nullcontext()
    with context, torch.no_grad():
        gm = make_fx(fn, pre_dispatch=True)(*args)
    if fake_mode is None and not any(isinstance(a, FakeTensor) for a in args):
        # Real inputs leave each node's value in a fake mode of its own; the pattern matcher needs one shared
        # mode, as Dynamo and export graphs have.
        FakeTensorProp(gm, FakeTensorMode(allow_non_fake_inputs=True)).propagate(*args)
    return gm


@dataclass
class CapturedGraph:
    """An ATen graph whose frozen inputs were turned into constants.

    `live_inputs` are the positions, among the original inputs, that the graph still takes.
    """

    graph_module: torch.fx.GraphModule
    live_inputs: list[int]
    num_inputs: int

    def __call__(self, *args):
        return self.graph_module(*(args[i] for i in self.live_inputs))


def freeze_inputs(gm: torch.fx.GraphModule, constants: dict[int, torch.Tensor], names: list[str]) -> list[int]:
    """Replace the placeholders at `constants`' positions with get_attr nodes; return the live positions."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    live = []
    for i, placeholder in enumerate(placeholders):
        if i not in constants:
            live.append(i)
            continue
        attr = add_constant(gm, constants[i], names[i])
        with gm.graph.inserting_before(placeholder):
            node = gm.graph.get_attr(attr)
        node.meta["val"] = placeholder.meta.get("val")
        node.meta["frozen_from"] = names[i]
        placeholder.replace_all_uses_with(node)
        gm.graph.erase_node(placeholder)
    gm.graph.lint()
    gm.recompile()
    return live


def capture_dynamo_graph(gm: torch.fx.GraphModule, example_inputs: list) -> CapturedGraph:
    """Lower a graph handed to a torch.compile backend; its `nn.Parameter` inputs become constants."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    fake_args = [n.meta.get("example_value", x) for n, x in zip(placeholders, example_inputs, strict=True)]
    # Trace in the fake mode that made Dynamo's example values (and their symbolic sizes), not the fresh
    # one Dynamo opens for backends: mixing the two is an error.
    fake_mode = next((x.fake_mode for x in fake_args if isinstance(x, FakeTensor)), None) or detect_fake_mode(fake_args)
    aten_gm = trace_aten(gm, fake_args, fake_mode)
    constants = {i: x for i, x in enumerate(example_inputs) if isinstance(x, torch.nn.Parameter)}
    names = [n.name.removeprefix("l_").removeprefix("args_0_") for n in placeholders]
    live = freeze_inputs(aten_gm, constants, names)
    return CapturedGraph(aten_gm, live, len(example_inputs))


def export_model(
    model: torch.nn.Module, args: tuple = (), kwargs: dict | None = None, dynamic_shapes=None
) -> CapturedGraph:
    """Ahead-of-time capture of a whole model with `torch.export` (non-strict); weights and buffers frozen.

    The graph takes the user inputs of `model(*args, **kwargs)`, flattened in `args, kwargs` order.
    """
    with torch.no_grad():
        program = torch.export.export(model, args, kwargs or {}, dynamic_shapes=dynamic_shapes, strict=False)
    gm = program.graph_module
    signature = program.graph_signature
    state = {**program.state_dict, **program.constants}
    lifted = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    constants = {i: state[lifted[n.name]] for i, n in enumerate(placeholders) if n.name in lifted}
    names = [lifted.get(n.name, n.name) for n in placeholders]
    live = freeze_inputs(gm, constants, names)
    _drop_export_metadata(gm)
    return CapturedGraph(gm, list(range(len(live))), len(live))


STEP_MODEL_ATTRIBUTE = "model"  # CausalLMStep holds the model here: a captured step's weight names start with it


class CausalLMStep(torch.nn.Module):
    """input_ids, position_ids -> logits of a Hugging Face causal LM, without a cache: the step that the
    runtime and the TensorRT target export (their CACHE passes add the cache to the graph)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits


def _drop_export_metadata(gm: torch.fx.GraphModule) -> None:
    """Make an exported graph module callable with flat positional inputs, like a Dynamo graph."""
    gm.graph._codegen = torch.fx.graph.CodeGen()
    gm.recompile()
