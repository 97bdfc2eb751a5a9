"""Which report family ("attention", "rope", "mlp", "norm") each fused op counts towards."""

from __future__ import annotations

import torch

FAMILY_OF_OP: dict[str, str] = {
    "trtllm::attention": "attention",
    "trtllm::paged_attention": "attention",
    "trtllm::rope": "rope",
    "trtllm::mlp_activation": "mlp",
    "trtllm::int4_gated_linear": "mlp",  # an INT4 gate/up GEMM with its activation (passes/fuse_int4_gated_mlp.py)
    "trtllm::rms_norm": "norm",
    "trtllm::add_rms_norm": "norm",
    "trtllm::layer_norm": "norm",
}


def family_of(target: object) -> str | None:
    """The family of a graph node's target if it is one of our fused ops, else None."""
    if isinstance(target, torch._ops.OpOverload | torch._ops.OpOverloadPacket):
        name = target.name() if isinstance(target, torch._ops.OpOverload) else target._qualified_op_name
        return FAMILY_OF_OP.get(name.split(".")[0])
    return None
