"""benchmarks/fp8_weight_floor.py: every linear FP8 quantizes, and only those, gets FP8 values in float."""

import torch
from support import TINY_MODELS, load_benchmark

from trtllm_compile.quantization import QuantConfig


def test_weights_become_their_fp8_values_but_the_lm_head():
    model = TINY_MODELS["llama"].build()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied, to see it kept
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    config = QuantConfig.from_name("fp8", activations="dynamic")
    assert load_benchmark("fp8_weight_floor").round_weights_to_fp8(model, config) == len(before) - 1
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        weight = module.weight.detach()
        if name == "lm_head":
            assert torch.equal(weight, before[name])
            continue
        scale = before[name].abs().amax(1, keepdim=True) / 448  # per-channel, as quantize_weight sets it
        codes = weight / scale
        assert not torch.equal(weight, before[name])
        assert torch.allclose(codes.to(torch.float8_e4m3fn).float(), codes, rtol=1e-6, atol=0)  # on the FP8 grid
