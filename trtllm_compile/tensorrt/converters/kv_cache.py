"""The KV-cache write of the step graphs: `trtllm_kv.cache_update` -> TensorRT's KV-cache update layer, which
writes in place (its output must be a network output bound to the cache input's memory)."""

from __future__ import annotations

import torch

from trtllm_compile.passes import insert_kv_cache_tensorrt  # noqa: F401  (registers the trtllm_kv ops)
from trtllm_compile.tensorrt.converters.registry import converter
from trtllm_compile.tensorrt.impl.tensors import cast, itensor


def _cache_is_an_io_buffer(node) -> str | None:
    cache = node.args[0]
    if cache.op != "placeholder":
        return "the cache must be a graph input (TensorRT updates it in place)"
    if not any(user.op == "output" for user in node.users):
        return "the updated cache must be a graph output (it aliases the cache input)"
    if not isinstance(cache.meta["val"].shape[2], int):
        return "the cache needs a static capacity (dim 2)"
    return None


@converter(torch.ops.trtllm_kv.cache_update.default, validator=_cache_is_an_io_buffer)
def convert_cache_update(ctx, node, cache, update, write_indices):
    trt = ctx.trt
    indices = cast(ctx, itensor(ctx, write_indices), torch.int32)  # tensorrt_rtx takes int32 write indices
    layer = ctx.net.add_kv_cache_update(cache, itensor(ctx, update), indices, trt.KVCacheMode.LINEAR)
    return layer.get_output(0)
