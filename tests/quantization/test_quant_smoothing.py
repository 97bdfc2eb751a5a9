"""SmoothQuant / AWQ smoothing as an exact rewrite of the float model, folded where the graph allows it."""

from __future__ import annotations

import pytest
import torch
from quant_support import rel_err
from support import TINY_MODELS

from trtllm_compile.ops import quant
from trtllm_compile.quantization import QuantConfig, calibrate
from trtllm_compile.quantization.apply import smooth
from trtllm_compile.quantization.calibration import InputStats
from trtllm_compile.quantization.smoothquant import smooth_weight, smoothing_scale

# Smoothing rescales weights and norm weights in float32: the logits move by float32 rounding only.
EXACT_RTOL = 1e-5


def _calibrated(arch: str, samples: int = 0):
    model = TINY_MODELS[arch].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    return model, windows, calibrate(model, windows=windows, samples=samples, kv_cache=False, progress=False)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3"])
def test_smoothing_is_exact_before_activation_quantization(arch):
    model, windows, calibration = _calibrated(arch)
    with torch.no_grad():
        expected = model(windows).logits
    plans = smooth(model, QuantConfig.from_name("int8_sq", alpha=0.8), calibration)
    with torch.no_grad():
        actual = model(windows).logits
    assert rel_err(actual, expected) <= EXACT_RTOL
    assert all(plan.scale is not None for plan in plans.values())

    folds = {key.rpartition(".")[2]: plan.folded_into for key, plan in plans.items() if ".layers.0." in key}
    mlp_norm = "pre_feedforward_layernorm" if arch == "gemma3" else "post_attention_layernorm"  # Gemma: 1 + w
    assert folds == {
        "q_proj": "model.layers.0.input_layernorm",
        "gate_proj": f"model.layers.0.{mlp_norm}",
        "down_proj": "model.layers.0.mlp.up_proj",  # act(gate) * up: 1/s goes into up's rows, not gate's
        "o_proj": None,  # after attention nothing folds: the QuantLinear multiplies its input by 1/s
    }
    assert plans["model.layers.0.self_attn.o_proj"].multiplier is not None


@pytest.mark.parametrize("kv_cache", [None, "fp8"])
def test_o_proj_scale_folds_into_v_rows_with_a_kv_head_per_query_head(kv_cache):
    """Multi-head attention: o_proj's input channel is a V channel weighted by the softmax, so 1/s divides v_proj's
    rows, exactly. Not before an FP8 KV cache, whose V scale was calibrated on the unscaled V."""
    model = TINY_MODELS["llama"].with_config(num_key_value_heads=4).build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, kv_cache=kv_cache is not None, progress=False)
    with torch.no_grad():
        expected = model(windows).logits
    plans = smooth(model, QuantConfig.from_name("int8_sq", alpha=0.8, kv_cache=kv_cache), calibration)
    with torch.no_grad():
        assert rel_err(model(windows).logits, expected) <= EXACT_RTOL
    o_proj = plans["model.layers.0.self_attn.o_proj"]
    if kv_cache is None:
        assert o_proj.folded_into == "model.layers.0.self_attn.v_proj" and o_proj.multiplier is None
    else:
        assert o_proj.folded_into is None and o_proj.multiplier is not None


def test_smoothing_moves_outliers_into_the_weights():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=gen)
    x[:, 5] *= 60  # one outlier channel: per-tensor INT8 spends its range on it
    w = torch.randn(32, 64, generator=gen) * 0.05
    stats = InputStats(x.abs().amax(0), x.abs().sum(0, dtype=torch.float64), x.shape[0])
    scale = smoothing_scale(w, stats, alpha=0.5)
    x_s, w_s = x / scale, smooth_weight(w, scale)
    torch.testing.assert_close(x_s @ w_s.T, x @ w.T, rtol=1e-5, atol=1e-5)  # the same GEMM
    assert x_s.abs().max() / x_s.abs().mean() < x.abs().max() / x.abs().mean() / 3

    def w8a8_error(xx, ww):  # per-tensor static activations, per-channel weights
        w_scale = ww.abs().amax(1) / 127
        w_q = (ww / w_scale[:, None]).round().to(torch.int8)
        out = quant.int8_linear_reference(xx, w_q, w_scale, xx.abs().max() / 127, None)
        return rel_err(out, x @ w.T)

    assert w8a8_error(x_s, w_s) < w8a8_error(x, w) / 3
