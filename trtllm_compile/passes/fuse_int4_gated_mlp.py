"""Run a gated MLP's INT4 gate/up GEMM and its activation as one op:

  mlp_activation(y[..., :I], y[..., I:], act) of y = int4_linear(x, [W_gate; W_up], ...)
    ->  int4_gated_linear(x, [W_gate; W_up], ..., act)

At one row (a decode step of one sequence) its CUDA kernel applies the activation in the GEMM's epilogue
(kernels/int4_gemv_mma.cu, gated): one launch a layer fewer and no [2I] intermediate. At more rows it runs the
GEMM and the activation kernel, as before. A LOWER pass, so the runtime's step graph only: quantize_linear has
made the INT4 GEMM of the [gate; up] weight fuse_gemms concatenated, and the TensorRT export, which stops before
LOWER, keeps the pair its converters take.
"""

from __future__ import annotations

import torch
import torch.fx

import trtllm_compile.ops.quant  # noqa: F401  (registers torch.ops.trtllm.int4_gated_linear)
from trtllm_compile.fx_utils import is_op, last_dim_slice, val
from trtllm_compile.passes.registry import Stage, register_pass

trtllm = torch.ops.trtllm


def _gate_up_gemm(activation: torch.fx.Node) -> torch.fx.Node | None:
    """The INT4 GEMM whose two halves are exactly `activation`'s gate and up, and feed nothing else."""
    gate, up = activation.args[:2]
    gemm = gate.args[0] if isinstance(gate, torch.fx.Node) and gate.args else None
    if not is_op(gemm, trtllm.int4_linear.default):
        return None
    width = val(gemm).shape[-1]
    if not isinstance(width, int) or width % 2:
        return None
    if last_dim_slice(gate) != (0, width // 2) or last_dim_slice(up) != (width // 2, width) or up.args[0] is not gemm:
        return None
    if set(gemm.users) != {gate, up} or set(gate.users) != {activation} or set(up.users) != {activation}:
        return None
    return gemm


@register_pass(Stage.LOWER)
def fuse_int4_gated_mlp(gm: torch.fx.GraphModule, config) -> int:
    """mlp_activation(int4_linear(x, [Wg; Wu])[..., :I], ...[..., I:], act) -> int4_gated_linear(x, [Wg; Wu], act)."""
    fused = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, trtllm.mlp_activation.default) or node.args[1] is None:
            continue
        gemm = _gate_up_gemm(node)
        if gemm is None:
            continue
        activation = node.args[2] if len(node.args) > 2 else node.kwargs["activation"]
        with gm.graph.inserting_before(node):
            gated = gm.graph.call_function(trtllm.int4_gated_linear.default, (*gemm.args, activation))
        gated.meta.update(gemm.meta)  # what quantize_linear and shard_tensor_parallel noted of the GEMM
        gated.meta["val"] = val(node)
        node.replace_all_uses_with(gated)
        gate, up = node.args[:2]
        for dead in (node, gate, up, gemm):
            gm.graph.erase_node(dead)
        fused += 1
    return fused
