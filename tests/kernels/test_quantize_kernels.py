"""The FP8 row quantizer (kernels/quantize.py) against `ops.quant.fp8_quantize`: the same E4M3 values, bit for bit,
and zero padding rows. On CPU the inputs are E4M3 codes times a power-of-two scale plus a saturating value
(Triton's interpreter mis-rounds fp32 -> E4M3 casts that carry into the exponent); on the GPU, random inputs."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.ops.quant import FP8_MAX, fp8_quantize


def _rows(m: int, k: int, exact: bool, device: str, row_stride: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(m + k)
    if exact:
        scale = torch.tensor(2.0**-3)
        x = fp8_quantize(torch.randn(m, k, generator=gen) * 40, torch.tensor(1.0)).float() * scale
        x[:, 1] = 3 * FP8_MAX * scale  # saturates to 448
    else:
        x = torch.randn(m, k, generator=gen) * 3
        scale = x.abs().max() / FP8_MAX * 0.5  # half the range: the largest values saturate
    wide = torch.zeros(m, row_stride or k)
    wide[:, :k] = x
    return wide[:, :k].to(device, torch.bfloat16), scale.to(device)


def _check(quantize, m: int, k: int, exact: bool, device: str) -> None:
    x, scale = _rows(m, k, exact, device, row_stride=k + 24)  # rows of a wider buffer
    padded = -(-m // 16) * 16
    assert quantize.supports(x, scale)
    out = quantize.fp8_quantize_rows(x, scale, padded)
    assert out.dtype == torch.float8_e4m3fn and out.shape == (padded, k)
    assert torch.equal(out[:m].view(torch.uint8), fp8_quantize(x, scale).view(torch.uint8))
    assert not out[m:].float().any()


@pytest.mark.parametrize(("m", "k"), [(1, 64), (5, 1000), (16, 2048)])
def test_fp8_quantize_rows_interpreted(interpreted, m, k):
    _check(interpreted("quantize"), m, k, exact=True, device="cpu")


def test_fp8_quantize_rows_refuses_too_few_rows(interpreted):
    quantize = interpreted("quantize")
    x, scale = _rows(4, 64, True, "cpu")
    with pytest.raises(ValueError, match="cannot quantize 4 rows into 2"):
        quantize.fp8_quantize_rows(x, scale, 2)
    assert not quantize.supports(x, scale.expand(4))  # per-token scales: the torch path


@pytest.mark.gpu
@pytest.mark.parametrize(("m", "k"), [(17, 4096), (256, 11008), (4096, 4096)])
def test_fp8_quantize_rows_gpu(m, k):
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 E4M3 needs compute capability 8.9 or newer")
    from trtllm_compile.kernels import quantize

    _check(quantize, m, k, exact=False, device="cuda")
