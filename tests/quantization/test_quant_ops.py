"""The quantized ops' references against a straightforward float64 dequantize-and-multiply, and their schemas."""

from __future__ import annotations

import pytest
import torch
from quant_support import REF_RTOL, rel_err

from trtllm_compile.ops import quant
from trtllm_compile.quantization import QuantConfig
from trtllm_compile.quantization.formats import fake_quantize_int4, int4_codes, quantize_weight

ops = torch.ops.trtllm
DTYPES = [torch.float32, torch.bfloat16]


def _inputs(m=5, k=192, n=48, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, m, k, generator=gen)
    x[..., 3] *= 40  # an outlier channel, as real activations have
    w = torch.randn(n, k, generator=gen) * 0.05
    bias = torch.randn(n, generator=gen) * 0.1
    return x.to(dtype), w, bias.to(dtype)


def test_fp8_activation_rounding_is_e4m3_and_saturates():
    scale = torch.tensor(0.5)
    x = torch.tensor([0.0, 1e-4, 0.3, -1.7, 100.0, 224.0, 1e4, -1e4])
    q = quant.fp8_quantize(x, scale)
    assert q.dtype == torch.float8_e4m3fn
    assert torch.equal(q.float()[:6], (x[:6] / scale).to(torch.float8_e4m3fn).float())  # round to nearest even
    assert q.float()[-2:].tolist() == [448.0, -448.0]  # saturates, whatever the bare cast does on a device


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
@pytest.mark.parametrize("per_channel", [True, False], ids=["per_channel", "per_tensor"])
def test_fp8_linear_matches_dequantized_matmul(dtype, static, per_channel):
    x, w, bias = _inputs(dtype=dtype)
    w_scale = w.abs().amax(1) / 448 if per_channel else w.abs().max() / 448
    w_fp8 = quant.fp8_quantize(w, w_scale[:, None] if per_channel else w_scale)
    x_scale = x.float().abs().max() / 448 if static else x.float().abs().amax(-1, keepdim=True) / 448
    x_dq = (x.float() / x_scale).clamp(-448, 448).to(torch.float8_e4m3fn).double() * x_scale.double()
    w_dq = w_fp8.double() * (w_scale.double()[:, None] if per_channel else w_scale.double())
    expected = (x_dq @ w_dq.T).to(dtype) + bias

    actual = ops.fp8_linear(x, w_fp8, w_scale, x_scale if static else None, bias)
    assert actual.dtype == dtype and actual.shape == (2, 5, 48)
    assert rel_err(actual, expected) <= REF_RTOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("static", [True, False], ids=["static", "dynamic"])
def test_int8_linear_matches_integer_gemm(dtype, static):
    x, w, bias = _inputs(dtype=dtype)
    w_scale = w.abs().amax(1) / 127
    w_int8 = (w / w_scale[:, None]).round().to(torch.int8)
    x_scale = x.float().abs().max() / 127 if static else x.float().abs().amax(-1, keepdim=True) / 127
    x_int8 = (x.float() / x_scale).round().clamp(-127, 127).to(torch.int64)
    exact = (x_int8 @ w_int8.to(torch.int64).T).double()  # the integer GEMM, exactly
    expected = (exact * x_scale.double() * w_scale.double()).to(dtype) + bias

    actual = ops.int8_linear(x, w_int8, w_scale, x_scale if static else None, bias)
    assert rel_err(actual, expected) <= REF_RTOL[dtype]


@pytest.mark.parametrize("zero_point", [True, False], ids=["asymmetric", "symmetric"])
@pytest.mark.parametrize("k, group_size", [(256, 128), (160, 64)], ids=["whole_groups", "short_last_group"])
def test_int4_linear_matches_dequantized_matmul(zero_point, k, group_size):
    x, w, bias = _inputs(k=k)
    codes, scales, zeros = int4_codes(w, group_size, zero_point)
    packed = quant.pack_int4(codes)
    assert packed.shape == (48, k // 2) and packed.dtype == torch.uint8
    assert torch.equal(quant.unpack_int4(packed), codes.to(torch.uint8))
    expected_w = torch.empty_like(w, dtype=torch.float64)
    for g in range(scales.shape[1]):  # group by group, as a reader of the format would
        cols = slice(g * group_size, (g + 1) * group_size)
        zero = zeros[:, g : g + 1].double() if zeros is not None else 8.0
        expected_w[:, cols] = (codes[:, cols].double() - zero) * scales[:, g : g + 1].double()
    expected = (x.double() @ expected_w.T).float() + bias

    actual = ops.int4_linear(x, packed, scales, zeros, group_size, bias)
    assert rel_err(actual, expected) <= REF_RTOL[torch.float32]


def test_fp8_qdq_is_idempotent_and_bounded():
    x = torch.randn(2, 3, 7, 16) * 5
    scale = torch.tensor(x.abs().max().item() / 448)
    once = ops.fp8_qdq(x, scale)
    assert torch.equal(ops.fp8_qdq(once, scale), once)  # a cache read back and re-written is unchanged
    assert rel_err(once, x) <= 2**-4  # E4M3: 3 mantissa bits, half-ulp relative error <= 2**-4


@pytest.mark.parametrize(
    "fmt, bound",
    # Relative error of the weights of a Gaussian matrix: E4M3 RMS ~2**-5.5; INT8 per channel ~amax/(127 sqrt 12);
    # INT4 per group of 128 ~range/(15 sqrt 12), a tenth of the weights' own RMS.
    [("fp8", 0.03), ("int8_sq", 0.015), ("int4_rtn", 0.15)],
)
def test_quantize_weight_error_is_what_the_format_allows(fmt, bound):
    w = torch.randn(64, 256)
    q = quantize_weight(QuantConfig.from_name(fmt), w, input_amax=4.0)
    if q.op == "int4_linear":
        dequantized = quant.dequantize_int4(q.weight, q.weight_scale, q.zeros, q.group_size)
        assert torch.equal(dequantized, fake_quantize_int4(w, 128, True))
    else:
        dequantized = q.weight.float() * q.weight_scale[:, None]
    assert ((dequantized - w).norm() / w.norm()).item() <= bound


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_int4_group_scales_and_zero_points_are_kept_in_the_models_dtype(dtype):
    """A half-precision model's INT4 groups keep scales and zero points in its dtype (the GPU GEMV reads half the
    bytes): the fp32 grid rounded once, and the codes the nearest on the scales the op will use, a step at most
    from the fp32 grid's; the weight may come as fp32 (the passes upcast it)."""
    w = torch.randn(32, 256)
    config = QuantConfig.from_name("int4_rtn")
    full = quantize_weight(config, w, None)
    q = quantize_weight(config, w, None, dtype=dtype)
    assert q.weight_scale.dtype == q.zeros.dtype == dtype
    assert torch.equal(q.weight_scale, full.weight_scale.to(dtype)) and torch.equal(q.zeros.float(), full.zeros)
    codes, full_codes = quant.unpack_int4(q.weight), quant.unpack_int4(full.weight)
    assert (codes.int() - full_codes.int()).abs().max() <= 1
    scales, zeros = q.weight_scale.float(), q.zeros.float()
    error = (quant.dequantize_codes(codes, scales, zeros, 128) - w).abs()
    assert torch.all(error <= (quant.dequantize_codes(full_codes, scales, zeros, 128) - w).abs() + 1e-6)
    assert quantize_weight(config, w.to(dtype), None).weight_scale.dtype == dtype  # by default the weight's


def test_per_tensor_scales_of_concatenated_weights_stay_per_part():
    """A fused Q/K/V weight quantized per tensor keeps one scale per original weight, repeated per row."""
    parts = [torch.randn(8, 32) * s for s in (1.0, 0.1, 3.0)]
    q = quantize_weight(QuantConfig.from_name("fp8", weight_scales="tensor"), torch.cat(parts), 1.0, [8, 8, 8])
    expected = torch.cat([(p.abs().max() / 448).expand(8) for p in parts])
    assert torch.equal(q.weight_scale, expected)


@pytest.mark.parametrize("op", ["fp8_linear", "int8_linear", "int4_linear", "fp8_qdq"])
def test_op_schema_fake_and_registration(op):
    x, w, bias = _inputs(k=128, n=32)
    args = {
        "fp8_linear": lambda: (x, quant.fp8_quantize(w, torch.tensor(0.01)), torch.tensor(0.01), None, bias),
        "int8_linear": lambda: (x, w.mul(1e3).round().to(torch.int8), torch.full((32,), 1e-3), torch.tensor(0.1), bias),
        "int4_linear": lambda: (x, *_int4_args(w), 64, None),
        "fp8_qdq": lambda: (x, torch.tensor(0.1)),
    }[op]()
    # torch's schema checker compares inputs with allclose, which CPU float8 lacks: fp8 weights skip it
    checks = ("test_faketensor",) if op == "fp8_linear" else ("test_schema", "test_faketensor")
    torch.library.opcheck(getattr(ops, op).default, args, test_utils=checks)


def _int4_args(w):
    codes, scales, zeros = int4_codes(w, 64, True)
    return quant.pack_int4(codes), scales, zeros


def test_dequantized_weight_cache_changes_nothing_but_speed():
    x, w, bias = _inputs(k=128, n=32)
    packed, scales, zeros = _int4_args(w)
    w_scale = w.abs().amax(1) / 448
    w_fp8 = quant.fp8_quantize(w, w_scale[:, None])
    plain = (ops.int4_linear(x, packed, scales, zeros, 64, bias), ops.fp8_linear(x, w_fp8, w_scale, None, bias))
    with quant.dequantized_weight_cache():
        for _ in range(2):  # the second call reads the memo
            assert torch.equal(ops.int4_linear(x, packed, scales, zeros, 64, bias), plain[0])
            assert torch.equal(ops.fp8_linear(x, w_fp8, w_scale, None, bias), plain[1])
        packed.bitwise_xor_(0x11)  # an in-place update bumps the version: the memo must not serve stale weights
        updated = ops.int4_linear(x, packed, scales, zeros, 64, bias)
    assert quant._dequantized is None
    assert torch.equal(updated, ops.int4_linear(x, packed, scales, zeros, 64, bias))
