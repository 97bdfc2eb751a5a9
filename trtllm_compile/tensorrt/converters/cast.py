"""Casts: `to(dtype)`, `to(device, dtype)`, `_to_copy` and `type_as` become cast layers (devices do not exist in a
network, so a device-only `to` is an identity)."""

from __future__ import annotations

from trtllm_compile.fx_utils import aten, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.tensors import cast, itensor


@converter(aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default, aten.type_as.default)
def convert_to(ctx, node, x, *args, **kwargs):
    return cast(ctx, itensor(ctx, x), val(node).dtype)
