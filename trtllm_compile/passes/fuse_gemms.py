"""Concatenate GEMMs that read the same activation (Q/K/V, gate/up) into one GEMM whose output is sliced.

One wide GEMM reads the activation once and fills the GPU better than three narrow ones. Only frozen weights
of one dtype are concatenated (the concatenation happens once, here); the slices are views, so the consumers
(RoPE, attention, the MLP activation) read the fused output in place.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, constant_of, insert_constant, is_op, val
from trtllm_compile.passes.registry import Stage, register_pass


def _weight_and_bias(gm, linear: torch.fx.Node):
    weight = constant_of(gm, linear.args[1])
    bias_node = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
    bias = constant_of(gm, bias_node) if bias_node is not None else None
    if weight is None or (bias_node is not None and bias is None):
        return None
    return weight, bias


def _fuse_group(gm, linears: list[torch.fx.Node]) -> None:
    weights, biases = zip(*(_weight_and_bias(gm, n) for n in linears), strict=True)
    first = linears[0]  # groups are collected in graph order
    fused_weight = insert_constant(gm, torch.cat(weights), f"{linears[0].args[1].target}_fused")
    fused_bias = None
    if biases[0] is not None:
        fused_bias = insert_constant(gm, torch.cat(biases), f"{linears[0].args[1].target}_fused_bias")
    with gm.graph.inserting_before(first):
        fused = gm.graph.call_function(aten.linear.default, (first.args[0], fused_weight, fused_bias))
    fused.meta["val"] = torch.cat([val(n) for n in linears], dim=-1)
    start = 0
    for linear, weight in zip(linears, weights, strict=True):
        with gm.graph.inserting_after(fused):
            part = gm.graph.call_function(aten.slice.Tensor, (fused, -1, start, start + weight.shape[0]))
        part.meta["val"] = val(linear)
        linear.replace_all_uses_with(part)
        gm.graph.erase_node(linear)
        start += weight.shape[0]


@register_pass(Stage.FUSE)
def fuse_gemms(gm: torch.fx.GraphModule, config) -> int:
    """linear(x, Wq), linear(x, Wk), linear(x, Wv) -> linear(x, [Wq; Wk; Wv]) sliced (likewise gate/up)."""
    groups: dict[tuple, list[torch.fx.Node]] = defaultdict(list)
    for node in gm.graph.nodes:
        if not is_op(node, aten.linear.default):
            continue
        parts = _weight_and_bias(gm, node)
        if parts is None:
            continue
        weight, bias = parts
        groups[(node.args[0], weight.dtype, weight.shape[1], bias is None)].append(node)
    fused = 0
    for linears in groups.values():
        if len(linears) > 1:
            _fuse_group(gm, linears)
            fused += 1
    return fused
