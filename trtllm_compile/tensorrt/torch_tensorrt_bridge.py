"""Optional: our fused-op converters in Torch-TensorRT's registry, where `torch_tensorrt` imports (it does not in
this project's CI, so this stays tiny and is tested only where it imports).

Torch-TensorRT calls `converter(ctx, target, args, kwargs, name)` with `ctx.net` the network and converted
arguments; ours also read the FX node's traced values. Torch-TensorRT hands every node to the capability validator
before converting it, so the validator remembers nodes by name for the converter to find.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)

FUSED_OPS = ("rms_norm", "add_rms_norm", "layer_norm", "rope", "attention", "mlp_activation")
_NODES: dict[str, torch.fx.Node] = {}


def register_with_torch_tensorrt() -> int:
    """Register our trtllm.* converters with torch_tensorrt; returns how many (0 where it does not import)."""
    try:
        from torch_tensorrt.dynamo.conversion._ConverterRegistry import dynamo_tensorrt_converter
    except ImportError:
        return 0
    from trtllm_compile.tensorrt.converters import registered_converters
    from trtllm_compile.tensorrt.impl.context import ConversionContext

    specs = registered_converters()
    for op_name in FUSED_OPS:
        spec = specs[getattr(torch.ops.trtllm, op_name).default]

        def validator(node, settings=None, _spec=spec) -> bool:
            _NODES[node.name] = node
            return _spec.validator is None or _spec.validator(node) is None

        def convert(ctx, target, args, kwargs, name, _spec=spec):
            node = _NODES[str(name).rsplit("/", 1)[-1]]
            return _spec.fn(ConversionContext(ctx.net, None, node), node, *args, **kwargs)

        dynamo_tensorrt_converter(spec.target, capability_validator=validator, supports_dynamic_shapes=True)(convert)
    logger.info("registered %d trtllm converters with torch_tensorrt", len(FUSED_OPS))
    return len(FUSED_OPS)
