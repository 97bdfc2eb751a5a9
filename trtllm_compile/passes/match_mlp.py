"""Match MLP activations into `trtllm.mlp_activation`: gated (SwiGLU, GeGLU) and plain (GPT-2/GPT-J GELU).

Only activations that sit between GEMMs (`linear -> act [* linear] -> linear`) count as MLPs; the GEMMs stay
`aten.linear` nodes so quantization and sharding see every GEMM the same way.
"""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, is_op
from trtllm_compile.passes.registry import Stage, register_pass

_ACTIVATIONS = {aten.silu.default: "silu", aten.relu.default: "relu"}


def _activation_name(node: torch.fx.Node) -> str | None:
    if node.target == aten.gelu.default:
        approximate = node.kwargs.get("approximate", node.args[1] if len(node.args) > 1 else "none")
        return "gelu_tanh" if approximate == "tanh" else "gelu"
    return _ACTIVATIONS.get(node.target)


def _feeds_gemm(node: torch.fx.Node) -> bool:
    return len(node.users) == 1 and is_op(next(iter(node.users)), aten.linear.default)


def _rewrite(gm, anchor: torch.fx.Node, gate, up, activation: str) -> None:
    with gm.graph.inserting_before(anchor):
        fused = gm.graph.call_function(torch.ops.trtllm.mlp_activation.default, (gate, up, activation))
    fused.meta["val"] = anchor.meta.get("val")
    anchor.replace_all_uses_with(fused)


@register_pass(Stage.MATCH)
def match_mlp(gm: torch.fx.GraphModule, config) -> int:
    """linear -> act(.) * linear -> linear (gated) and linear -> act -> linear (plain) -> trtllm.mlp_activation."""
    count = 0
    for node in list(gm.graph.nodes):
        activation = _activation_name(node) if node.op == "call_function" else None
        if activation is None or not is_op(node.args[0], aten.linear.default) or len(node.users) != 1:
            continue
        user = next(iter(node.users))
        if is_op(user, aten.mul.Tensor) and _feeds_gemm(user):
            up = user.args[1] if user.args[0] is node else user.args[0]
            if is_op(up, aten.linear.default) and up.args[0] is node.args[0].args[0]:
                _rewrite(gm, user, node.args[0], up, activation)
                count += 1
        elif is_op(user, aten.linear.default):
            _rewrite(gm, node, node.args[0], None, activation)
            count += 1
    return count
