import pytest
import torch
from network_support import builds, convert_fn, layer_types, output_dtypes, output_shapes


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, y: x + y * 2.0,
        lambda x, y: (x - y) / 3,
        lambda x, y: torch.rsqrt(x.abs() + 1) * torch.tanh(y),
        lambda x, y: x.pow(2).mean(-1, keepdim=True) + y.sum(-1, keepdim=True),
        lambda x, y: torch.softmax(x, dim=-1) * torch.sigmoid(y),
        lambda x, y: torch.where(x > y, x, y.neg()),
        lambda x, y: torch.cos(x) + torch.sin(y) + torch.exp(x) * torch.nn.functional.silu(y),
    ],
    ids=["add-scalar", "sub-div", "unary", "reduce", "softmax", "where", "trig"],
)
def test_elementwise_follows_torch_shapes_and_dtypes(fn):
    x, y = torch.randn(2, 3, 8, dtype=torch.float16), torch.randn(3, 8, dtype=torch.float16)  # y broadcasts
    converted = convert_fn(fn, x, y)
    expected = fn(x.float(), y.float())
    assert output_shapes(converted) == [tuple(expected.shape)]
    assert output_dtypes(converted) == [fn(x, y).dtype]
    assert builds(converted)


def test_mixed_dtypes_promote_like_torch():
    converted = convert_fn(lambda a, b: a * b, torch.randn(4, dtype=torch.float16), torch.randn(4))
    assert output_dtypes(converted) == [torch.float32]
    assert layer_types(converted)["CAST"] == 1


def test_comparisons_and_logic_on_ints():
    converted = convert_fn(lambda a, b: (a <= b) & (a != 3), torch.arange(6), torch.full((6,), 2))
    assert output_dtypes(converted) == [torch.bool]
    assert builds(converted)
