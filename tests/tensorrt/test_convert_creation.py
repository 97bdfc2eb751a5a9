import torch
from network_support import builds, convert_fn, convert_module, layer_types, output_dtypes, output_shapes


def test_zeros_of_a_symbolic_size():
    batch = torch.export.Dim("batch", min=1, max=8)
    converted = convert_module(
        lambda x: torch.zeros(x.shape[0], dtype=torch.int32) + 1, (torch.randn(3, 2),), ({0: batch},)
    )
    assert output_shapes(converted) == [(-1,)]
    assert output_dtypes(converted) == [torch.int32]
    assert builds(converted)


def test_arange_and_casts():
    converted = convert_fn(
        lambda x: torch.arange(5, dtype=torch.float32) + x.to(torch.float32), torch.ones(5, dtype=torch.float16)
    )
    assert layer_types(converted)["FILL"] == 1 and layer_types(converted)["CAST"] == 1
    assert output_shapes(converted) == [(5,)]
    assert builds(converted)
