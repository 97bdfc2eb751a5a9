"""benchmarks/fp8_floor.py: every linear FP8 quantizes, and only those, gets FP8 weights (or reads FP8 inputs)."""

import torch
from support import TINY_MODELS, load_benchmark

from trtllm_compile.quantization import QuantConfig


def test_weights_become_their_fp8_values_but_the_lm_head():
    model = TINY_MODELS["llama"].build()
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied, to see it kept
    before = {name: m.weight.detach().clone() for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    config = QuantConfig.from_name("fp8", activations="dynamic")
    assert load_benchmark("fp8_floor").round_weights_to_fp8(model, config) == len(before) - 1
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


def _on_fp8_grid_per_token(x: torch.Tensor) -> bool:
    codes = x / (x.abs().amax(-1, keepdim=True) / 448)
    return torch.allclose(codes.to(torch.float8_e4m3fn).float(), codes, rtol=1e-6, atol=0)


def test_inputs_become_fp8_values_per_token_but_the_lm_heads_until_the_hooks_go():
    model = TINY_MODELS["llama"].build()
    handles = load_benchmark("fp8_floor").round_inputs_to_fp8(model, QuantConfig.from_name("fp8"))
    seen = {}  # what each linear reads: these hooks run after the rounding ones
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].detach()))
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        model(ids)
    assert len(handles) == len(seen) - 1
    assert {name: _on_fp8_grid_per_token(x) for name, x in seen.items()} == {name: name != "lm_head" for name in seen}
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        model(ids)
    assert not any(_on_fp8_grid_per_token(x) for x in seen.values())
