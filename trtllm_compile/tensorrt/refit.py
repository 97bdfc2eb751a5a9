"""`refit()`: new weights into refittable engines without rebuilding them.

An engine's weights are the graph's constants, named after their `get_attr` targets, and some of them are made by
the passes (Q/K/V concatenated by `fuse_gemms`). So the new state dict goes through the same capture and passes,
and each engine gets every constant its refitter asks for, by name. A refitter works on a deserialized engine,
which needs a GPU the flavour can run on (see `runtime.runtime_unavailable_reason`).
"""

from __future__ import annotations

import copy
import logging

import torch

from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.build import BuildResult
from trtllm_compile.tensorrt.cache import replace_file
from trtllm_compile.tensorrt.export import export_step_graph
from trtllm_compile.tensorrt.impl.context import ConversionContext
from trtllm_compile.tensorrt.impl.tensors import weights
from trtllm_compile.tensorrt.runtime import TensorRTEngine, _require_runtime

logger = logging.getLogger(__name__)


def graph_constants(model: torch.nn.Module, built: BuildResult) -> dict[str, torch.Tensor]:
    """Every constant the step graph of `model` holds, by name, as the engines of `built` were made."""
    settings = built.manifest["settings"]
    dtype = getattr(torch, settings["dtype"])
    gm = export_step_graph(
        model, dtype, settings["max_batch_size"], settings["max_seq_len"], settings["max_num_tokens"]
    ).graph_module
    return {node.target: getattr(gm, node.target) for node in gm.graph.nodes if node.op == "get_attr"}


def refit(
    built: BuildResult, new_state_dict: dict[str, torch.Tensor], model: torch.nn.Module | None = None
) -> dict[str, object]:
    """Refit every engine of `built` with `new_state_dict` (loaded into a copy of `model`, by default the model
    `built` came from); returns the refitted ICudaEngines and rewrites the engine files."""
    model = model if model is not None else built.model
    if model is None:
        raise ValueError("refit needs the model the engines came from (pass model=...) to rebuild fused weights")
    if not built.manifest["settings"]["refittable"]:
        raise ValueError("these engines were built with refittable=False; rebuild with refittable=True to refit")
    _require_runtime()
    trt = flavour.require_trt()
    updated = copy.deepcopy(model)
    updated.load_state_dict(new_state_dict, strict=False)
    constants = graph_constants(updated, built)
    refitted = {}
    for name, info in built.engines.items():
        engine = TensorRTEngine(info.path).engine
        refitter = trt.Refitter(engine, flavour.trt_logger())
        holder = ConversionContext(None, None)  # keeps the host tensors alive until the refit is done
        for weight_name in refitter.get_all_weights():
            if weight_name not in constants:
                raise KeyError(f"engine {name} has refittable weights {weight_name!r} that the new graph lacks")
            refitter.set_named_weights(weight_name, weights(holder, constants[weight_name]))
        missing = refitter.get_missing_weights()
        if missing or not refitter.refit_cuda_engine():
            raise RuntimeError(f"refitting engine {name} failed (missing weights: {list(missing)})")
        replace_file(info.path, bytes(engine.serialize()))  # interrupted: the engine before the refit stays
        refitted[name] = engine
        logger.info("refitted %s (%d weights)", name, len(refitter.get_all_weights()))
    return refitted
