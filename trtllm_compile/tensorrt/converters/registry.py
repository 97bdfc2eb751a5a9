"""The converter registry: `@converter(target, validator=...)` maps an FX node target to a thin function.

A converter is `fn(ctx, node, *args, **kwargs)` where the node's FX arguments arrive already converted (ITensors,
`FrozenTensor` weights, size tensors) and literals as they are; it returns an ITensor, a tuple of them, or a
Python value. A validator `fn(node) -> str | None` returns why a node it cannot convert is unsupported (the
partitioner then leaves it in PyTorch, or the build names it in its error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.fx

from trtllm_compile.fx_utils import op_name

Validator = Callable[[torch.fx.Node], str | None]
ConverterFn = Callable[..., object]


@dataclass(frozen=True)
class ConverterSpec:
    target: object
    fn: ConverterFn
    validator: Validator | None


_CONVERTERS: dict[object, ConverterSpec] = {}


def converter(*targets, validator: Validator | None = None) -> Callable[[ConverterFn], ConverterFn]:
    """Register `fn` as the converter of every target (an OpOverload, or a Python callable like getitem)."""

    def decorate(fn: ConverterFn) -> ConverterFn:
        for target in targets:
            if target in _CONVERTERS:
                raise ValueError(f"{target} has two TensorRT converters")
            _CONVERTERS[target] = ConverterSpec(target, fn, validator)
        return fn

    return decorate


def registered_converters() -> dict[object, ConverterSpec]:
    return dict(_CONVERTERS)


def find_converter(node: torch.fx.Node) -> tuple[ConverterSpec | None, str | None]:
    """(spec, None) when `node` converts, else (None, why not)."""
    spec = _CONVERTERS.get(node.target)
    if spec is None:
        return None, f"no TensorRT converter for {target_name(node)}"
    reason = spec.validator(node) if spec.validator is not None else None
    if reason:
        return None, f"{target_name(node)}: {reason}"
    return spec, None


def target_name(node: torch.fx.Node) -> str:
    return op_name(node) if node.op == "call_function" else node.op
