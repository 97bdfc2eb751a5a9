"""benchmarks/gptq_cost.py: both modes quantize every linear but the LM head, and it times them."""

import pytest
import torch
from support import LAYERS, TINY_MODELS, load_benchmark

from trtllm_compile.quantization.modules import QuantLinear


@pytest.mark.parametrize("mode", ["one-pass", "by-layer"])
def test_each_mode_quantizes_the_model_and_reports_its_cost(mode):
    model = TINY_MODELS["llama"].build()
    windows = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    cost = load_benchmark("gptq_cost").measure(model, "int4_gptq", mode, windows)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 7 * LAYERS
    assert cost["calibrate_s"] > 0 and cost["quantize_s"] > 0 and cost["peak_gib"] is None  # no CUDA here


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="one-pass"):
        load_benchmark("gptq_cost").measure(TINY_MODELS["llama"].build(), "int4_gptq", "fast", torch.zeros(1, 4))
