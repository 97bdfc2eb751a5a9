"""Random-weight models of published shapes, created directly on the target device (no hub, no disk)."""

from __future__ import annotations

import torch
import transformers

SHAPES: dict[str, tuple[str, dict]] = {
    "llama-2-7b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            vocab_size=32000,
            max_position_embeddings=4096,
        ),
    ),
    "llama-3-8b": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            intermediate_size=14336,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            rope_theta=500000.0,
            max_position_embeddings=8192,
        ),
    ),
    "llama-2-70b": (  # more than one GPU holds: use --num-layers, or --tp
        "LlamaConfig",
        dict(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=80,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=32000,
            max_position_embeddings=4096,
        ),
    ),
    "gptj-6b": (
        "GPTJConfig",
        dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048),
    ),
}


def layer_gemms(shape: str) -> dict[str, tuple[int, int]]:
    """The (N, K) weights of one decoder layer's GEMMs of a Llama-style `shape` as the compiled step runs them:
    fused Q/K/V, o_proj, fused gate/up, down_proj."""
    config_class, fields = SHAPES[shape]
    if config_class != "LlamaConfig":
        raise ValueError(f"{shape} is not a Llama-style shape; choose one of those with LlamaConfig in SHAPES")
    hidden, inter = fields["hidden_size"], fields["intermediate_size"]
    kv = fields["num_key_value_heads"] * hidden // fields["num_attention_heads"]
    return {
        "qkv": (hidden + 2 * kv, hidden),
        "o": (hidden, hidden),
        "gate_up": (2 * inter, hidden),
        "down": (hidden, inter),
    }


def random_model(shape: str, dtype: torch.dtype, device: str | torch.device, num_layers: int | None = None):
    """A model of `shape` with random weights (std 0.02) made on `device`; `num_layers` cuts it shorter."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    config_class, fields = SHAPES[shape]
    config = getattr(transformers, config_class)(**fields)
    if num_layers is not None:
        config.num_hidden_layers = num_layers
    config.eos_token_id = None  # random weights never stop on their own: every request runs its full length
    _check_fits(shape, config, dtype, torch.device(device))
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def _check_fits(shape: str, config, dtype: torch.dtype, device: torch.device) -> None:
    """Refuse a model whose weights alone exceed the device's free memory: building it would end in an
    out-of-memory kill (the host's) or error halfway, after minutes."""
    with torch.device("meta"):
        skeleton = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in skeleton.parameters())
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        from trtllm_compile.runtime.kv_cache import available_host_memory

        free = available_host_memory()
    if free is not None and weight_bytes > free:
        raise ValueError(
            f"{shape} ({config.num_hidden_layers} layers) in {str(dtype).removeprefix('torch.')} takes "
            f"{weight_bytes / 2**30:.1f} GiB of weights, more than the {free / 2**30:.1f} GiB free on {device}: "
            "cut it with --num-layers, or take a smaller --dtype"
        )
