"""AWQ: the activation-aware scale search and range clipping never lose to round-to-nearest."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.quantization.awq import clip_weight, search_scale
from trtllm_compile.quantization.calibration import InputStats
from trtllm_compile.quantization.formats import fake_quantize_int4


def _salient_layer(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 256, generator=gen)
    x[:, :4] *= 30  # a few salient input channels, as AWQ finds in real activations
    w = torch.randn(96, 256, generator=gen) * 0.05
    stats = InputStats(x.abs().amax(0), x.abs().sum(0, dtype=torch.float64), x.shape[0], [x])
    return x, w, stats


def _output_error(x, w, w_hat):
    return (x @ w_hat.T - x @ w.T).pow(2).mean().item()


@pytest.mark.parametrize("zero_point", [True, False], ids=["asymmetric", "symmetric"])
def test_scale_search_beats_round_to_nearest(zero_point):
    x, w, stats = _salient_layer()
    found = search_scale(w, stats, group_size=128, zero_point=zero_point, grid=20)
    rtn = _output_error(x, w, fake_quantize_int4(w, 128, zero_point))
    assert found.rtn_error == pytest.approx(rtn, rel=1e-4)
    assert found.alpha > 0 and found.error < 0.7 * rtn
    scaled = fake_quantize_int4(w * found.scale, 128, zero_point) / found.scale  # what the model then computes
    assert _output_error(x, w, scaled) == pytest.approx(found.error, rel=1e-4)


def test_clipping_lowers_the_output_error():
    x, w, _ = _salient_layer(seed=1)
    clipped = clip_weight(w, x[:256], group_size=128, zero_point=True, grid=20)
    assert clipped.abs().max() <= w.abs().max()
    assert _output_error(x, w, fake_quantize_int4(clipped, 128, True)) < _output_error(
        x, w, fake_quantize_int4(w, 128, True)
    )


@pytest.mark.slow
def test_scale_search_on_smollm2_layers_beats_rtn(smollm2, smollm2_calibration):
    """On real weights and c4 activations, every group of the first, middle and last layers improves."""
    model, _ = smollm2
    calibration = smollm2_calibration
    for layer in (0, 15, 29):
        for key in [k for k in calibration.groups if f".layers.{layer}." in k]:
            weight = torch.cat([model.get_submodule(n).weight.detach() for n in calibration.groups[key]])
            found = search_scale(weight, calibration.inputs[key], group_size=128, zero_point=True, grid=10)
            assert found.error <= found.rtn_error, key
            assert found.error < found.rtn_error or found.alpha == 0, key
