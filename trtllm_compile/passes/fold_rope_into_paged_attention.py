"""Fold the RoPE of q and k into the paged attention that reads them: `paged_attention(rope(q), rope(k), ...)`
-> `paged_attention(q, k, ..., cos=, sin=, interleaved=)`.

A decode step then rotates q and k, writes K/V into the cache and attends in one kernel where it took four
launches a layer (kernels/paged_attention.py); steps with prefills rotate first, as before. Folded only when both
ropes share cos, sin and layout, feed nothing else, and cos holds one row per token ([1, 1, T, R], HF's
`unsqueeze(1)` layout): GPT-J rotates [B, T, H, D] rows before a permute and keeps its separate ropes.
"""

from __future__ import annotations

import torch
import torch.fx
from torch.fx.experimental.symbolic_shapes import statically_known_true

from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.passes.registry import Stage, register_pass

_ROPE = torch.ops.trtllm.rope.default


def _rotary(q: torch.fx.Node, k: torch.fx.Node, attention: torch.fx.Node) -> tuple | None:
    """(cos, sin, interleaved) when q and k are ropes of the same embedding that only this attention reads."""
    if not (is_op(q, _ROPE) and is_op(k, _ROPE)) or q is k:
        return None
    if any(set(rope.users) != {attention} or rope.kwargs for rope in (q, k)):
        return None
    rotary = (*q.args[1:3], q.args[3] if len(q.args) > 3 else False)
    if rotary != (*k.args[1:3], k.args[3] if len(k.args) > 3 else False):
        return None
    cos, tokens = val(rotary[0]), val(q).shape[2]
    if cos is None or cos.dim() != 4 or tuple(cos.shape[:2]) != (1, 1):
        return None
    return rotary if statically_known_true(cos.shape[2] == tokens) else None


@register_pass(Stage.CACHE)
def fold_rope_into_paged_attention(gm: torch.fx.GraphModule, config) -> int:
    """paged_attention(rope(q, cos, sin), rope(k, cos, sin), ...) -> paged_attention(q, k, ..., cos=cos, sin=sin)."""
    folded = 0
    for node in list(gm.graph.nodes):
        if not is_op(node, torch.ops.trtllm.paged_attention.default) or "cos" in node.kwargs:
            continue
        q, k = node.args[:2]
        rotary = _rotary(q, k, node)
        if rotary is None:
            continue
        cos, sin, interleaved = rotary
        node.args = (q.args[0], k.args[0], *node.args[2:])
        node.kwargs = {**node.kwargs, "cos": cos, "sin": sin, "interleaved": interleaved}
        gm.graph.erase_node(q)
        gm.graph.erase_node(k)
        folded += 1
    return folded
