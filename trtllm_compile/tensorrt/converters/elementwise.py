"""Elementwise arithmetic, comparisons, unary math, activations, reductions and softmax; also the SymInt arithmetic
(`operator.add` on sizes) that dynamic shapes leave in a graph."""

from __future__ import annotations

import operator

import torch

from trtllm_compile.fx_utils import aten, val
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl import elementwise as ew
from trtllm_compile.tensorrt.impl.shape import as_size_tensor, is_static
from trtllm_compile.tensorrt.impl.tensors import itensor


def _out(node) -> torch.dtype:
    return val(node).dtype


def _operand_dtype(node) -> torch.dtype:
    """The type torch computes a comparison in: tensors promote, a Python scalar only lifts ints to float."""
    tensors = [val(a) for a in node.args[:2] if isinstance(val(a), torch.Tensor)]
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    scalars = [a for a in node.args[:2] if isinstance(a, float)]
    return torch.float32 if scalars and not dtype.is_floating_point else dtype


_BINARY = {
    aten.add.Tensor: "SUM",
    aten.add.Scalar: "SUM",
    aten.sub.Tensor: "SUB",
    aten.sub.Scalar: "SUB",
    aten.mul.Tensor: "PROD",
    aten.mul.Scalar: "PROD",
    aten.div.Tensor: "DIV",
    aten.div.Scalar: "DIV",
    aten.maximum.default: "MAX",
    aten.minimum.default: "MIN",
}


@converter(*_BINARY)
def convert_binary(ctx, node, a, b, alpha=1):
    if alpha != 1:
        b = ew.mul(ctx, b, alpha, _out(node))
    return ew.binary(ctx, _BINARY[node.target], a, b, _out(node))


@converter(aten.rsub.Scalar, aten.rsub.Tensor)
def convert_rsub(ctx, node, a, b, alpha=1):
    a = ew.mul(ctx, a, alpha, _out(node)) if alpha != 1 else a
    return ew.binary(ctx, "SUB", b, a, _out(node))


_COMPARE = {
    aten.eq.Tensor: ("EQUAL", False),
    aten.eq.Scalar: ("EQUAL", False),
    aten.ne.Tensor: ("EQUAL", True),
    aten.ne.Scalar: ("EQUAL", True),
    aten.lt.Tensor: ("LESS", False),
    aten.lt.Scalar: ("LESS", False),
    aten.gt.Tensor: ("GREATER", False),
    aten.gt.Scalar: ("GREATER", False),
    aten.ge.Tensor: ("LESS", True),
    aten.ge.Scalar: ("LESS", True),
    aten.le.Tensor: ("GREATER", True),
    aten.le.Scalar: ("GREATER", True),
}


@converter(*_COMPARE)
def convert_compare(ctx, node, a, b):
    op, negate = _COMPARE[node.target]
    result = ew.binary(ctx, op, a, b, _operand_dtype(node))
    return ew.unary(ctx, "NOT", result) if negate else result


@converter(aten.__and__.Tensor, aten.logical_and.default, aten.bitwise_and.Tensor)
def convert_and(ctx, node, a, b):
    return ew.binary(ctx, "AND", a, b, torch.bool)


@converter(aten.__or__.Tensor, aten.logical_or.default, aten.bitwise_or.Tensor)
def convert_or(ctx, node, a, b):
    return ew.binary(ctx, "OR", a, b, torch.bool)


@converter(aten.logical_not.default, aten.bitwise_not.default)
def convert_not(ctx, node, x):
    return ew.unary(ctx, "NOT", x)


@converter(aten.pow.Tensor_Scalar)
def convert_pow(ctx, node, x, exponent):
    if exponent == 2:
        return ew.mul(ctx, x, x, _out(node))
    return ew.binary(ctx, "POW", x, float(exponent), _out(node))


_UNARY = {
    aten.neg.default: "NEG",
    aten.cos.default: "COS",
    aten.sin.default: "SIN",
    aten.exp.default: "EXP",
    aten.log.default: "LOG",
    aten.sqrt.default: "SQRT",
    aten.abs.default: "ABS",
    aten.reciprocal.default: "RECIP",
    aten.erf.default: "ERF",
}


@converter(*_UNARY)
def convert_unary(ctx, node, x):
    return ew.unary(ctx, _UNARY[node.target], itensor(ctx, x, _out(node)))


@converter(aten.rsqrt.default)
def convert_rsqrt(ctx, node, x):
    return ew.rsqrt(ctx, itensor(ctx, x, _out(node)))


@converter(aten.tanh.default)
def convert_tanh(ctx, node, x):
    return ew.activation(ctx, "TANH", x)


@converter(aten.sigmoid.default)
def convert_sigmoid(ctx, node, x):
    return ew.activation(ctx, "SIGMOID", x)


@converter(aten.relu.default)
def convert_relu(ctx, node, x):
    return ew.activation(ctx, "RELU", x)


@converter(aten.silu.default)
def convert_silu(ctx, node, x):
    return ew.silu(ctx, x)


@converter(aten.gelu.default)
def convert_gelu(ctx, node, x, approximate="none"):
    return ew.ACTIVATIONS["gelu_tanh" if approximate == "tanh" else "gelu"](ctx, x)


@converter(aten.masked_fill.Scalar)  # the vocab-parallel embedding zeroes other ranks' rows with it
def convert_masked_fill(ctx, node, x, mask, value):
    return ew.where(ctx, mask, value, x, _out(node))


@converter(aten.where.self)
def convert_where(ctx, node, condition, a, b):
    return ew.where(ctx, condition, a, b, _out(node))


def _reduce_dims(x, dims) -> list[int]:
    if dims is None or (isinstance(dims, list | tuple) and not dims):
        return list(range(len(x.shape)))
    return list(dims) if isinstance(dims, list | tuple) else [dims]


@converter(aten.mean.dim, aten.sum.dim_IntList, aten.amax.default)
def convert_reduce(ctx, node, x, dims=None, keepdim=False, dtype=None):
    op = {aten.mean.dim: "AVG", aten.sum.dim_IntList: "SUM", aten.amax.default: "MAX"}[node.target]
    x = itensor(ctx, x, _out(node))
    return ew.reduce(ctx, op, x, _reduce_dims(x, dims), keepdim)


@converter(aten.softmax.int, aten._softmax.default)
def convert_softmax(ctx, node, x, dim, dtype_or_half_to_float=None):
    return ew.softmax(ctx, itensor(ctx, x, _out(node)), dim)


_SYM = {operator.add: "SUM", operator.sub: "SUB", operator.mul: "PROD", operator.floordiv: "FLOOR_DIV"}


@converter(*_SYM)
def convert_sym_arithmetic(ctx, node, a, b):
    """Size arithmetic: ints stay Python ints, a symbolic size is an int64 [1] tensor."""
    if is_static(a) and is_static(b):
        return _SYM[node.target](a, b)
    a, b = as_size_tensor(ctx, a), as_size_tensor(ctx, b)
    return ew.binary(ctx, _SYM[node.target], a, b, torch.int64)
