"""TensorRT converters, one module per op family; importing this package registers them all."""

from trtllm_compile.tensorrt.converters import (  # noqa: F401  (registers the converters)
    attention,
    cast,
    collectives,
    creation,
    elementwise,
    embedding,
    kv_cache,
    linear,
    mlp,
    norm,
    quant,
    rope,
    shape,
)
from trtllm_compile.tensorrt.converters.registry import converter, find_converter, registered_converters

__all__ = ["converter", "find_converter", "registered_converters"]
