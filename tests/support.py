"""Shared test support: tolerances, small random-weight configs of the supported architectures and the fused-op
counts each should give."""

from __future__ import annotations

import importlib.util
import types
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

LAYERS = 2

# Tolerances, stated once. fp32: the fused ops compute what eager does, in another order at most (SDPA vs
# matmul-softmax, fused residual add), so they agree to float32 rounding over a few layers: 1e-4 relative to
# the largest logit is the bar the issue sets, and the measured error is ~1e-7.
FP32_REL_TOL = 1e-4


def load_benchmark(name: str) -> types.ModuleType:
    """A script of benchmarks/ (not a package) as a module, e.g. load_benchmark("decode_profile")."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


@dataclass(frozen=True)
class TinyModel:
    name: str
    config_class: str
    model_class: str
    config: dict

    def with_config(self, **overrides) -> TinyModel:
        return TinyModel(self.name, self.config_class, self.model_class, {**self.config, **overrides})

    def build(self, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        config = getattr(transformers, self.config_class)(**self.config)
        config._attn_implementation = attn_implementation
        torch.manual_seed(0)
        model = getattr(transformers, self.model_class)(config).to(dtype).eval()
        return model

    def expected_matches(self) -> dict[str, int]:
        """Fused ops per family that every decoder layer must yield."""
        per_layer = {
            "llama": dict(attention=1, rope=2, mlp=1, norm=2),
            "mistral": dict(attention=1, rope=2, mlp=1, norm=2),
            "qwen2": dict(attention=1, rope=2, mlp=1, norm=2),
            "gemma3": dict(attention=1, rope=2, mlp=1, norm=6),  # 4 sandwich norms + q/k norms
            "gpt2": dict(attention=1, rope=0, mlp=1, norm=2),
            "gptj": dict(attention=1, rope=2, mlp=1, norm=1),  # parallel attention and MLP share ln_1
        }[self.name]
        counts = {family: n * LAYERS for family, n in per_layer.items()}
        counts["norm"] += 1  # the final norm
        return counts


_DECODER = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=LAYERS,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)

TINY_MODELS = {
    "llama": TinyModel("llama", "LlamaConfig", "LlamaForCausalLM", _DECODER),
    "mistral": TinyModel("mistral", "MistralConfig", "MistralForCausalLM", {**_DECODER, "sliding_window": 4}),
    "qwen2": TinyModel("qwen2", "Qwen2Config", "Qwen2ForCausalLM", _DECODER),
    "gemma3": TinyModel(
        "gemma3",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {
            **_DECODER,
            "head_dim": 16,
            "sliding_window": 4,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    ),
    "gpt2": TinyModel(
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=256, n_embd=64, n_layer=LAYERS, n_head=4, n_positions=128),
    ),
    "gptj": TinyModel(
        "gptj",
        "GPTJConfig",
        "GPTJForCausalLM",
        dict(vocab_size=256, n_embd=64, n_layer=LAYERS, n_head=4, rotary_dim=8, n_positions=128),
    ),
}


def generating_model(name: str, **overrides) -> torch.nn.Module:
    """A tiny model that runs every request to its length (random weights: no EOS), `overrides` on its config."""
    model = TINY_MODELS[name].with_config(**overrides).build()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def random_prompts(lengths=(3, 9, 5, 12, 1, 7)) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(1, 256, (n,), generator=generator).tolist() for n in lengths]


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    """Hugging Face generate's greedy continuation of one prompt."""
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False)
    return out[0, len(prompt) :].tolist()
