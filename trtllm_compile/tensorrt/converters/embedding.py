"""Embedding lookups and single-tensor indexing as gathers (`wte[input_ids]`, GPT-J's `embed_positions[pos]`)."""

from __future__ import annotations

from trtllm_compile.fx_utils import aten
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.tensors import itensor


@converter(aten.embedding.default)
def convert_embedding(ctx, node, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return ctx.net.add_gather(itensor(ctx, weight), itensor(ctx, indices), 0).get_output(0)


def _one_index_tensor(node) -> str | None:
    indices = node.args[1]
    used = [i for i, index in enumerate(indices) if index is not None]
    if len(used) != 1:
        return "only indexing with one index tensor converts (a gather on one dim)"
    return None


@converter(aten.index.Tensor, validator=_one_index_tensor)
def convert_index(ctx, node, x, indices):
    axis = next(i for i, index in enumerate(indices) if index is not None)
    index = itensor(ctx, indices[axis])
    if index.dtype not in (ctx.trt.int32, ctx.trt.int64):
        raise NotImplementedError(f"indexing with {index.dtype} (boolean masks) does not convert")
    return ctx.net.add_gather(itensor(ctx, x), index, axis).get_output(0)
