"""The MLP activation `act(gate) * up` (SwiGLU/GeGLU) or `act(x)`, over the GEMMs that stay `aten.linear`."""

from __future__ import annotations

import torch

from trtllm_compile.fx_utils import val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.elementwise import ACTIVATIONS, mul
from trtllm_compile.tensorrt.impl.tensors import itensor


def _known_activation(node) -> str | None:
    activation = node.args[2] if len(node.args) > 2 else node.kwargs.get("activation")
    return None if activation in ACTIVATIONS else f"activation {activation!r} has no TensorRT form"


@converter(torch.ops.trtllm.mlp_activation.default, validator=_known_activation)
def convert_mlp_activation(ctx, node, gate, up, activation):
    out = ACTIVATIONS[activation](ctx, itensor(ctx, gate))
    return mul(ctx, out, up, val(node).dtype) if up is not None else out
