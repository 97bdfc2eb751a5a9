"""The MLP activation: `act(gate) * up` (SwiGLU, GeGLU) or `act(x)` (GPT-2/GPT-J MLP).

The GEMMs around it stay `aten.linear` nodes, so quantization and sharding treat every GEMM alike; the
fuse stage concatenates gate/up into one GEMM, and the kernel reads both halves of its output in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.ops.library import custom_op

ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def mlp_activation_reference(gate: Tensor, up: Tensor | None, activation: str) -> Tensor:
    """`activation(gate) * up`, or `activation(gate)` when `up` is None, in eager PyTorch."""
    out = ACTIVATIONS[activation](gate)
    return out * up if up is not None else out.clone()


@custom_op("trtllm::mlp_activation", mutates_args=())
def mlp_activation(gate: Tensor, up: Tensor | None, activation: str) -> Tensor:
    """`activation(gate) * up`, or `activation(gate)` when `up` is None."""
    return mlp_activation_reference(gate, up, activation)


@mlp_activation.register_fake
def _(gate: Tensor, up: Tensor | None, activation: str) -> Tensor:
    return torch.empty_like(gate)
