import torch
from network_support import builds, convert_fn, layer_types, output_shapes

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes import insert_kv_cache_tensorrt  # noqa: F401  (registers trtllm_kv ops)
from trtllm_compile.tensorrt.converters import find_converter

cache_update = torch.ops.trtllm_kv.cache_update


def test_cache_update_is_the_in_place_kv_cache_layer():
    cache, new = torch.zeros(2, 2, 32, 16, dtype=torch.float16), torch.randn(2, 2, 3, 16, dtype=torch.float16)
    write_at = torch.tensor([0, 4], dtype=torch.int64)  # int64 here: the converter casts to the int32 RTX needs
    converted = convert_fn(lambda c, u, i: cache_update(c, u, i), cache, new, write_at)
    assert layer_types(converted)["KV_CACHE_UPDATE"] == 1
    assert output_shapes(converted) == [(2, 2, 32, 16)]
    assert builds(converted)


def test_cache_that_is_not_an_io_buffer_is_refused():
    def fn(cache, new, write_at):
        return cache_update(cache * 2, new, write_at) + 1  # neither a graph input nor a graph output

    args = (torch.zeros(1, 2, 8, 4), torch.randn(1, 2, 1, 4), torch.zeros(1, dtype=torch.int32))
    node = next(n for n in trace_aten(fn, args).graph.nodes if n.target is cache_update.default)
    spec, reason = find_converter(node)
    assert spec is None and "graph input" in reason
