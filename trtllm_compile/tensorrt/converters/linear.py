"""GEMMs: `aten.linear` (weights [N, K] read transposed by the matrix-multiply layer, so a refit finds them
unchanged) and activation-by-activation matmuls."""

from __future__ import annotations

from trtllm_compile.fx_utils import aten, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.elementwise import add
from trtllm_compile.tensorrt.impl.shape import rank, to_rank
from trtllm_compile.tensorrt.impl.tensors import itensor


def _matmul(ctx, a, b, transpose_b: bool = False):
    trt = ctx.trt
    r = max(rank(a), rank(b))
    a, b = to_rank(ctx, a, r), to_rank(ctx, b, r)
    ops = trt.MatrixOperation
    return ctx.net.add_matrix_multiply(a, ops.NONE, b, ops.TRANSPOSE if transpose_b else ops.NONE).get_output(0)


@converter(aten.linear.default)
def convert_linear(ctx, node, x, weight, bias=None):
    x = itensor(ctx, x)
    out = _matmul(ctx, x, itensor(ctx, weight, rank=rank(x)), transpose_b=True)
    if bias is not None:
        out = add(ctx, out, itensor(ctx, bias, rank=rank(out)), val(node).dtype)
    return out


@converter(aten.matmul.default, aten.bmm.default, aten.mm.default)
def convert_matmul(ctx, node, a, b):
    return _matmul(ctx, itensor(ctx, a), itensor(ctx, b))
