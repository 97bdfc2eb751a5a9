import pytest
import torch
from network_support import builds, convert_fn, layer_types, output_dtypes, output_shapes

trtllm = torch.ops.trtllm
DTYPES = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
def test_rms_norm_is_built_in_fp32_from_primitives(dtype, unit_offset):
    x, w = torch.randn(2, 3, 64, dtype=dtype), torch.randn(64, dtype=dtype)
    converted = convert_fn(lambda x, w: trtllm.rms_norm(x, w, 1e-6, unit_offset), x, w)
    layers = layer_types(converted)
    assert "NORMALIZATION" not in layers  # TensorRT's normalization layer has no RMS mode
    assert layers["REDUCE"] == 1 and layers["CAST"] >= 2  # mean of squares in fp32, cast back
    assert output_shapes(converted) == [(2, 3, 64)]
    assert output_dtypes(converted) == [trtllm.rms_norm(x, w, 1e-6, unit_offset).dtype]
    assert builds(converted)


def test_add_rms_norm_returns_normed_and_residual():
    x, r, w = torch.randn(2, 3, 64, dtype=torch.float16), torch.randn(2, 3, 64, dtype=torch.float16), torch.ones(64)
    converted = convert_fn(lambda x, r, w: trtllm.add_rms_norm(x, r, w.half(), 1e-6), x, r, w)
    assert output_shapes(converted) == [(2, 3, 64), (2, 3, 64)]
    assert output_dtypes(converted) == [torch.float16, torch.float16]
    assert builds(converted)


@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_uses_the_normalization_layer(affine):
    x = torch.randn(2, 3, 64, dtype=torch.float16)
    w, b = torch.randn(64, dtype=torch.float16), torch.randn(64, dtype=torch.float16)
    fn = (
        (lambda x, w, b: trtllm.layer_norm(x, w, b, 1e-5))
        if affine
        else (lambda x, w, b: trtllm.layer_norm(x, None, None, 1e-5))
    )
    converted = convert_fn(fn, x, w, b)
    assert layer_types(converted)["NORMALIZATION"] == 1
    assert output_shapes(converted) == [(2, 3, 64)]
    assert builds(converted)
