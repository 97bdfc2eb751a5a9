import torch
from network_support import builds, convert_fn, convert_module, layer_types, output_shapes


def test_attention_layout_shuffles_with_dynamic_batch_and_sequence():
    def fn(x):  # [B, S, 64] -> heads [B, 4, S, 16] and back, as every decoder layer does
        b, s = x.shape[:2]
        heads = x.view(b, s, -1, 16).transpose(1, 2)
        return heads.transpose(1, 2).reshape(b, s, -1)

    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=1, max=16)
    converted = convert_module(fn, (torch.randn(2, 5, 64),), ({0: batch, 1: seq},))
    assert output_shapes(converted) == [(-1, -1, 64)]
    assert builds(converted, max_size=16)


def test_static_heads_stay_static_next_to_symbolic_sizes():
    batch = torch.export.Dim("batch", min=1, max=8)
    converted = convert_module(lambda x: x.view(x.shape[0], 3, -1, 16), (torch.randn(2, 3, 64),), ({0: batch},))
    assert output_shapes(converted) == [(-1, 3, 4, 16)]  # -1 resolved from torch's traced size, not left to TRT


def test_slices_cat_split_unsqueeze_expand():
    def fn(x):
        a, b = x.split([3, 5], dim=-1)
        y = torch.cat([b[..., 1:4], a], dim=-1)
        return y.unsqueeze(1).expand(2, 4, 6, 6), x[:, ::2]

    converted = convert_fn(fn, torch.randn(2, 6, 8))
    assert output_shapes(converted) == [(2, 4, 6, 6), (2, 3, 8)]
    assert builds(converted)


def test_dynamic_slice_to_the_end():
    seq = torch.export.Dim("seq", min=3, max=16)  # x[:, 1:] of length 1 would be a special case to torch.export
    converted = convert_module(lambda x: x[:, 1:] * 2, (torch.randn(2, 5),), ({1: seq},))
    assert output_shapes(converted) == [(2, -1)]
    assert builds(converted, max_size=16)


def test_repeat_interleave_and_permute():
    converted = convert_fn(lambda x: x.repeat_interleave(2, dim=-1).permute(2, 0, 1), torch.randn(2, 3, 4))
    assert output_shapes(converted) == [(8, 2, 3)]
    assert layer_types(converted)["SLICE"] >= 1
    assert builds(converted)
