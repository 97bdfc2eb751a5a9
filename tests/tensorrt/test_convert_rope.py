import torch
from network_support import builds, convert_fn, layer_types, output_shapes

rope = torch.ops.trtllm.rope


def _tables(freqs: torch.Tensor, interleaved: bool):
    """cos/sin with each rotated pair's value twice, the way HF (cat) and GPT-J (repeat_interleave) build them."""
    doubled = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat([freqs, freqs], dim=-1)
    return doubled.cos(), doubled.sin()


def test_rotate_half_uses_the_rotary_layer():
    x = torch.randn(2, 4, 5, 16, dtype=torch.float16)  # [B, H, S, D]
    freqs = torch.randn(2, 5, 8)

    def fn(x, freqs):
        cos, sin = _tables(freqs, False)
        return rope(x, cos.unsqueeze(1).half(), sin.unsqueeze(1).half(), False)

    converted = convert_fn(fn, x, freqs)
    assert layer_types(converted)["ROTARY_EMBEDDING"] == 1
    assert output_shapes(converted) == [(2, 4, 5, 16)]
    assert builds(converted)


def test_gptj_interleaved_partial_rotary_in_bsnd_layout():
    x = torch.randn(2, 5, 4, 16, dtype=torch.float16)  # [B, S, H, D], rotary over the first 8 features
    freqs = torch.randn(2, 5, 4)

    def fn(x, freqs):
        cos, sin = _tables(freqs, True)
        return rope(x, cos.unsqueeze(2).half(), sin.unsqueeze(2).half(), True)

    converted = convert_fn(fn, x, freqs)
    layers = layer_types(converted)
    assert layers["ROTARY_EMBEDDING"] == 1 and layers["SHUFFLE"] >= 2  # to [B, H, S, D] and back
    assert output_shapes(converted) == [(2, 5, 4, 16)]
    assert builds(converted)


def test_tables_not_provably_paired_fall_back_to_primitives():
    # cos/sin arrive as graph inputs: nothing proves each pair shares a value, so the layer would be wrong.
    x = torch.randn(2, 4, 5, 16, dtype=torch.float16)
    cos, sin = torch.randn(2, 1, 5, 16, dtype=torch.float16), torch.randn(2, 1, 5, 16, dtype=torch.float16)
    converted = convert_fn(lambda x, c, s: rope(x, c, s, False), x, cos, sin)
    layers = layer_types(converted)
    assert "ROTARY_EMBEDDING" not in layers and layers["CONCATENATION"] >= 1
    assert output_shapes(converted) == [(2, 4, 5, 16)]
    assert builds(converted)


def test_interleaved_primitives_and_partial_passthrough():
    x = torch.randn(1, 3, 2, 16, dtype=torch.float32)
    cos, sin = torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8)
    converted = convert_fn(lambda x, c, s: rope(x, c, s, True), x, cos, sin)
    assert "ROTARY_EMBEDDING" not in layer_types(converted)
    assert output_shapes(converted) == [(1, 3, 2, 16)]
    assert builds(converted)
