import pytest
import torch
from network_support import builds, convert_fn, convert_module, layer_types, output_shapes

from trtllm_compile.capture import trace_aten
from trtllm_compile.passes import insert_kv_cache_tensorrt  # noqa: F401  (registers trtllm_kv ops)
from trtllm_compile.tensorrt.converters import find_converter

attention = torch.ops.trtllm.attention
cached_attention = torch.ops.trtllm_kv.cached_attention


def _qkv(seq: int, kv_seq: int | None = None, dtype=torch.float16):
    kv_seq = kv_seq or seq
    return (
        torch.randn(2, 4, seq, 16, dtype=dtype),
        torch.randn(2, 2, kv_seq, 16, dtype=dtype),  # GQA: 2 key/value heads for 4 query heads
        torch.randn(2, 2, kv_seq, 16, dtype=dtype),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_causal_gqa_attention_is_one_native_attention(dtype):
    converted = convert_fn(lambda q, k, v: attention(q, k, v, None, 0.25, True), *_qkv(5, dtype=dtype))
    layers = layer_types(converted)
    assert layers["ATTENTION_INPUT"] == 1 and layers["ATTENTION_OUTPUT"] == 1
    assert "FILL" not in layers  # causal flag, no mask
    assert output_shapes(converted) == [(2, 4, 5, 16)]
    assert builds(converted)


def test_sliding_window_builds_a_mask_from_aranges():
    converted = convert_fn(lambda q, k, v: attention(q, k, v, None, 0.25, True, 3), *_qkv(6))
    layers = layer_types(converted)
    assert layers["ATTENTION_INPUT"] == 1 and layers["FILL"] == 2  # query and key positions
    assert "CONSTANT" not in {k for k, n in layers.items() if n > 40}  # no S x S constant mask
    assert builds(converted)


def test_dynamic_sequence_length():
    seq = torch.export.Dim("seq", min=1, max=16)
    dynamic = ({2: seq}, {2: seq}, {2: seq})
    converted = convert_module(lambda q, k, v: attention(q, k, v, None, 0.25, True, 4), _qkv(5), dynamic)
    assert output_shapes(converted) == [(2, 4, -1, 16)]
    assert builds(converted, max_size=16)


def test_soft_capping_is_refused_by_the_validator():
    q, k, v = _qkv(4)
    gm = trace_aten(lambda q, k, v: attention(q, k, v, None, 0.25, True, -1, 30.0), (q, k, v))
    node = next(n for n in gm.graph.nodes if n.target is attention.default)
    spec, reason = find_converter(node)
    assert spec is None and "soft-capping" in reason


def test_decode_attention_over_the_cache_uses_key_lengths():
    q, k, v = _qkv(1, kv_seq=32)
    lengths = torch.tensor([3, 7], dtype=torch.int32)
    converted = convert_fn(lambda q, k, v, n: cached_attention(q, k, v, n, 0.25), q, k, v, lengths)
    layers = layer_types(converted)
    assert layers["ATTENTION_INPUT"] == 1 and "FILL" not in layers  # one new token: lengths, no mask
    assert output_shapes(converted) == [(2, 4, 1, 16)]
    assert builds(converted)


def test_prefill_attention_over_the_cache_masks_per_sequence():
    q, k, v = _qkv(5, kv_seq=32)
    lengths = torch.tensor([5, 9], dtype=torch.int32)
    converted = convert_fn(lambda q, k, v, n: cached_attention(q, k, v, n, 0.25, 4), q, k, v, lengths)
    layers = layer_types(converted)
    assert layers["ATTENTION_INPUT"] == 1 and layers["FILL"] == 2
    assert output_shapes(converted) == [(2, 4, 5, 16)]
    assert builds(converted)
