import torch
from network_support import builds, convert_fn, convert_module, layer_types, output_shapes


def test_linear_reads_frozen_weights_transposed_and_names_them():
    module = torch.nn.Linear(32, 48).half()
    batch = torch.export.Dim("batch", min=1, max=8)
    converted = convert_module(module, (torch.randn(2, 5, 32, dtype=torch.float16),), ({0: batch},))
    layers = layer_types(converted)
    assert layers["MATRIX_MULTIPLY"] == 1 and "SHUFFLE" not in layers  # no transpose copy of the weight
    assert sorted(converted.context.named_weights) == ["bias", "weight"]  # refit finds weights by these names
    assert output_shapes(converted) == [(-1, 5, 48)]
    assert builds(converted)


def test_matmul_of_two_activations():
    a, b = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 8, 3)
    converted = convert_fn(torch.matmul, a, b)
    assert layer_types(converted)["MATRIX_MULTIPLY"] == 1
    assert output_shapes(converted) == [(2, 4, 5, 3)]
    assert builds(converted)
