"""Match rotary position embeddings into `trtllm.rope`: HF's rotate-half form, GPT-J's interleaved form, and
partial rotary (rotate a leading slice, concatenate the rest)."""

from __future__ import annotations

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, is_op, same_shape, val
from trtllm_compile.ops.rope import rotate_every_two, rotate_half
from trtllm_compile.passes.patterns import PatternSet, pattern_set
from trtllm_compile.passes.registry import Stage, register_pass


def rope_rotate_half(x, cos, sin):
    return (x * cos) + (rotate_half(x) * sin)


def rope_interleaved(x, cos, sin):
    return (x * cos) + (rotate_every_two(x) * sin)


def _rotates_all_of_x(match) -> bool:
    """The op reads its rotary width from cos, so a cos broadcast along the features must not match."""
    return val(match.kwargs["cos"]).shape[-1] == val(match.kwargs["x"]).shape[-1]


@pattern_set("rope")
def _rope_patterns(patterns: PatternSet) -> None:
    def inputs(dtype):
        return [
            torch.randn(2, 4, 3, 8, dtype=dtype),
            torch.randn(2, 1, 3, 8, dtype=dtype),
            torch.randn(2, 1, 3, 8, dtype=dtype),
        ]

    patterns.add(
        rope_rotate_half,
        lambda x, cos, sin: torch.ops.trtllm.rope(x, cos, sin, False),
        inputs,
        extra_check=_rotates_all_of_x,
    )
    patterns.add(
        rope_interleaved,
        lambda x, cos, sin: torch.ops.trtllm.rope(x, cos, sin, True),
        inputs,
        extra_check=_rotates_all_of_x,
    )


def _leading_slice(node, end: int | None = None):
    """(source, stop) if `node` is x[..., :stop] on the last dim, else None."""
    if not is_op(node, aten.slice.Tensor) or len(node.args) < 4 or node.args[2] != 0:
        return None
    source = node.args[0]
    return (source, node.args[3]) if node.args[1] % val(source).dim() == val(source).dim() - 1 else None


def _fold_partial_rotary(gm: torch.fx.GraphModule) -> int:
    """cat([rope(x[..., :r]), x[..., r:]], -1) -> rope(x): the op passes the un-rotated features through."""
    count = 0
    for cat in list(gm.graph.nodes):
        if not is_op(cat, aten.cat.default) or len(cat.args[0]) != 2:
            continue
        cat_dim = cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)
        rotated, passed = cat.args[0]
        if not is_op(rotated, torch.ops.trtllm.rope.default) or not is_op(passed, aten.slice.Tensor):
            continue
        leading = _leading_slice(rotated.args[0])
        if leading is None or passed.args[0] is not leading[0] or passed.args[2] != leading[1]:
            continue
        source = leading[0]
        last_dim = val(source).dim() - 1
        if cat_dim % (last_dim + 1) != last_dim or passed.args[1] % (last_dim + 1) != last_dim:
            continue
        if not same_shape(val(cat), val(source)):  # the passed-through slice must run to the end, step 1
            continue
        with gm.graph.inserting_before(cat):
            fused = gm.graph.call_function(torch.ops.trtllm.rope.default, (source, *rotated.args[1:]))
        fused.meta["val"] = val(cat)
        cat.replace_all_uses_with(fused)
        count += 1
    return count


@register_pass(Stage.MATCH)
def match_rope(gm: torch.fx.GraphModule, config) -> int:
    """x * cos + rotate(x) * sin (rotate-half or interleaved, full or partial) -> trtllm.rope."""
    return _rope_patterns.apply(gm) + _fold_partial_rotary(gm)
