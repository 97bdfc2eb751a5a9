"""Tensors made in the graph: zeros/ones/full (with symbolic sizes) and arange (a LINSPACE fill)."""

from __future__ import annotations

from trtllm_compile.fx_utils import aten, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import shape as sh


@converter(aten.zeros.default, aten.ones.default, aten.full.default, aten.new_zeros.default, aten.new_ones.default)
def convert_fill(ctx, node, *args, dtype=None, layout=None, device=None, pin_memory=None):
    value = {aten.zeros.default: 0, aten.ones.default: 1, aten.new_zeros.default: 0, aten.new_ones.default: 1}
    sizes = args[1] if node.target in (aten.new_zeros.default, aten.new_ones.default) else args[0]
    fill_value = value.get(node.target, args[1] if len(args) > 1 else 0)
    return sh.fill(ctx, list(sizes), fill_value, val(node).dtype)


@converter(aten.arange.default, aten.arange.start, aten.arange.start_step)
def convert_arange(ctx, node, *args, dtype=None, layout=None, device=None, pin_memory=None):
    start, end, step = (0, args[0], 1) if len(args) == 1 else (args[0], args[1], args[2] if len(args) > 2 else 1)
    if not (isinstance(start, int) and isinstance(step, int)):
        raise NotImplementedError("arange with a symbolic start or step")
    length = end - start if sh.is_static(end) else end
    if not sh.is_static(end) and (start != 0 or step != 1):
        raise NotImplementedError("arange with a symbolic end takes start 0 and step 1")
    return sh.arange(ctx, length if step == 1 else -(-length // step), val(node).dtype, start, step)
