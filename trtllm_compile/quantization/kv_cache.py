"""FP8 KV cache: calibrated per-layer K and V scales, applied as a quantize-dequantize of what the cache stores.

Hugging Face attention modules call the function registered under their `config._attn_implementation` with
the keys and values after RoPE and after the cache update, which is exactly what a KV cache holds. So the FP8
cache is an attention implementation wrapping the model's own ("trtllm_fp8_kv_sdpa" around "sdpa"): it lets a
calibration observer see K and V, and on a quantized model rounds them through FP8 E4M3 with the attention
module's `k_scale` / `v_scale` before attending. Under torch.compile the rounding appears as `trtllm::fp8_qdq`
nodes in front of the attention, where a KV-cache target reads the scales from.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

import torch
from torch import nn

from trtllm_compile.ops.quant import FP8_MAX, fp8_qdq

logger = logging.getLogger(__name__)

PREFIX = "trtllm_fp8_kv_"
KVObserver = Callable[[nn.Module, torch.Tensor, torch.Tensor], None]
_observer: KVObserver | None = None


def _base_attention(base: str, module: nn.Module) -> Callable:
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if base == "eager":  # each modeling file defines its own eager attention
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[base]


def _wrapping(base: str) -> Callable:
    def attention(module, query, key, value, attention_mask, **kwargs):
        if _observer is not None:
            _observer(module, key, value)
        k_scale = getattr(module, "k_scale", None)
        if k_scale is not None:
            key, value = fp8_qdq(key, k_scale), fp8_qdq(value, module.v_scale)
        return _base_attention(base, module)(module, query, key, value, attention_mask, **kwargs)

    return attention


def implementation_for(base: str) -> str:
    """Register (once) and return the name of the FP8-KV attention implementation wrapping `base`."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    if base.startswith(PREFIX):
        return base
    if base not in ("sdpa", "eager"):
        raise ValueError(
            f"an FP8 KV cache wraps the 'sdpa' or 'eager' attention, not {base!r}; load the model "
            "with attn_implementation='sdpa'"
        )
    name = PREFIX + base
    if name not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionInterface.register(name, _wrapping(base))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


@contextlib.contextmanager
def observing_kv(model: nn.Module, observer: KVObserver) -> Iterator[None]:
    """Within the block, every attention call of `model` hands its K and V to `observer`."""
    global _observer
    original = model.config._attn_implementation
    model.set_attn_implementation(implementation_for(original))
    _observer = observer
    try:
        yield
    finally:
        _observer = None
        model.set_attn_implementation(original)


def kv_scales(k_amax: float, v_amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor FP8 scales that map the calibrated ranges onto E4M3's +-448."""
    return tuple(torch.tensor(max(amax, 1e-6) / FP8_MAX, dtype=torch.float32) for amax in (k_amax, v_amax))


def install_fp8_kv_cache(model: nn.Module, scales: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Give each named attention module its `k_scale` / `v_scale` and switch the model to the FP8-KV wrapper.

    The scales are frozen parameters, so torch.compile capture turns them into constants beside the weights.
    """
    modules = dict(model.named_modules())
    for name, (k_scale, v_scale) in scales.items():
        attention = modules[name]
        device = next(attention.parameters()).device  # beside the weights, where the attention runs
        attention.k_scale = nn.Parameter(k_scale.to(device, copy=True), requires_grad=False)
        attention.v_scale = nn.Parameter(v_scale.to(device, copy=True), requires_grad=False)
    model.set_attn_implementation(implementation_for(model.config._attn_implementation))
    logger.info("FP8 KV cache on %d attention modules", len(scales))
