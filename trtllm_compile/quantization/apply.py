"""`quantize(model, fmt, calib_texts, tokenizer)`: calibrate, smooth, and swap every nn.Linear for a QuantLinear.

Design: quantization happens on the model, before any capture. The returned model's linears call the trtllm
quantized ops, so eager PyTorch, `torch.compile(backend="trtllm")`, `trtllm_compile.compile` and later targets all
see the same quantized GEMMs, and the checkpoint of what was run is simply the module's state dict. The same
numerics also exist as a graph pass (passes/quantize_linear.py) for graphs captured from an unquantized model
with a calibration in the compile options; both paths share `input_scale_for` and `quantize_group_weights`.

Smoothing (SmoothQuant) and AWQ scales s multiply a group's weights; the matching 1/s on the input is folded
into the op producing it when that is exact, checked on a random probe: the preceding norm's weight (Q/K/V,
gate/up), a sibling linear's output rows (down_proj after up_proj, through act(gate) * up), or V's output rows
(o_proj after attention with a KV head per query head, checked on the whole model). Where no fold checks out
(o_proj after grouped-query attention, or before an FP8 KV cache) the QuantLinear multiplies its input by 1/s.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from trtllm_compile.quantization.awq import clip_weight, search_scale
from trtllm_compile.quantization.calibration import Calibration, InputStats, calibrate
from trtllm_compile.quantization.config import QuantConfig
from trtllm_compile.quantization.formats import QuantizedWeight, WeightGrid, quantize_weight, weight_grid
from trtllm_compile.quantization.gptq import gptq_round
from trtllm_compile.quantization.kv_cache import install_fp8_kv_cache, kv_scales
from trtllm_compile.quantization.modules import QuantLinear
from trtllm_compile.quantization.smoothquant import smoothing_scale

logger = logging.getLogger(__name__)

# A fold is exact in real arithmetic; the probe only has to tell it from a wrong one (errors of order 1).
_FOLD_TOL = {torch.float32: 1e-4, torch.float64: 1e-8}
_FOLD_TOL_HALF = 2e-2
_CLIP_TOKENS = 256  # AWQ's clip search compares per-group partial sums: a few hundred tokens pin it down
# Hugging Face's names of attention's K and V projections, fused ones included (Phi-3, Falcon, MPT)
_KEY_VALUE_PROJECTIONS = ("k_proj", "v_proj", "key", "value", "qkv_proj", "query_key_value", "Wqkv")


def input_scale_for(config: QuantConfig, weight: torch.Tensor, stats: InputStats) -> torch.Tensor | None:
    """The per-input-channel scale s of a group (weights times s, input divided by s), or None for none."""
    if config.format == "int8_sq":
        return smoothing_scale(weight, stats, config.alpha)
    if config.format == "int4_awq":
        found = search_scale(weight, stats, config.group_size, config.zero_point, config.awq_grid)
        return found.scale if found.alpha > 0 else None
    return None


def quantize_group_weights(
    config: QuantConfig,
    weights: list[torch.Tensor],
    group: list[str],
    stats: InputStats,
    scale: torch.Tensor | None,
    input_amax: float | None,
    row_splits: list[list[int] | None] | None = None,
    dtype: torch.dtype | None = None,
) -> list[QuantizedWeight]:
    """Quantize the weights of the group of linears `group` (one per linear, or fused concatenations of them with
    their `row_splits`), all reading the input of `stats` and already multiplied by the group's scale s (None: no
    scale): AWQ's clipping, then round to nearest or, with rounding="gptq", by GPTQ on the Gram matrix of the input
    the weights see, x / s. GPTQ's rows are independent given that matrix, so it rounds the group's weights as one
    stack: one pass over the K columns where one per weight would repeat it (Q/K/V: 3 passes, gate/up: 2)."""
    row_splits = row_splits or [None] * len(weights)
    if config.format == "int4_awq" and config.awq_clip:
        tokens = stats.samples[:_CLIP_TOKENS]
        tokens = tokens / scale if scale is not None else tokens
        weights = [clip_weight(w, tokens, config.group_size, config.zero_point, config.awq_grid) for w in weights]
    if config.rounding != "gptq":
        return [quantize_weight(config, w, input_amax, s, dtype) for w, s in zip(weights, row_splits, strict=True)]
    feeds_kv = any(name.rpartition(".")[2] in _KEY_VALUE_PROJECTIONS for name in group)
    hessian = stats.hessian(config.gptq_sink_weight if feeds_kv else 1.0)
    if scale is not None:
        hessian = hessian / scale[:, None] / scale[None, :]
    grids = [weight_grid(config, w, s, dtype or w.dtype) for w, s in zip(weights, row_splits, strict=True)]
    stacked = gptq_round(torch.cat([w.detach().float() for w in weights]), hessian, WeightGrid.stack(grids))
    parts = stacked.split([len(w) for w in weights])
    return [
        quantize_weight(config, part, input_amax, s, dtype, grid)
        for part, s, grid in zip(parts, row_splits, grids, strict=True)
    ]


def _close(actual: torch.Tensor, expected: torch.Tensor) -> bool:
    tol = _FOLD_TOL.get(expected.dtype, _FOLD_TOL_HALF)
    return bool(((actual - expected).abs().max() <= tol * expected.abs().max().clamp(min=1e-6)).item())


def _probe(width: int, like: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(4, width, generator=generator).to(device=like.device, dtype=like.dtype)


@torch.no_grad()
def _fold_into_norm(norm: nn.Module, scale: torch.Tensor) -> bool:
    """norm(x) / s by rescaling the norm's weight (and bias); tries Gemma's (1 + w) form too."""
    weight = getattr(norm, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.shape != scale.shape:
        return False
    probe = _probe(weight.numel(), weight)
    expected = norm(probe) / scale.to(weight.dtype)
    original = weight.detach().clone()
    bias = getattr(norm, "bias", None)
    for offset in (0.0, 1.0):
        weight.copy_(((original.float() + offset) / scale - offset).to(weight.dtype))
        if isinstance(bias, torch.Tensor):
            bias.div_(scale.to(bias.dtype))
        if _close(norm(probe), expected):
            return True
        weight.copy_(original)
        if isinstance(bias, torch.Tensor):
            bias.mul_(scale.to(bias.dtype))
    return False


@torch.no_grad()
def _fold_rows_if_exact(
    producer: nn.Linear, member: nn.Linear, scale: torch.Tensor, output: Callable[[], torch.Tensor], expected
) -> bool:
    """Divide `producer`'s output rows by s and multiply `member`'s weight by s (its input's 1/s undone); kept if
    `output()` still gives `expected`, else undone."""
    saved = [(t, t.detach().clone()) for t in (producer.weight, producer.bias, member.weight) if t is not None]
    producer.weight.div_(scale.to(producer.weight.dtype)[:, None])
    if producer.bias is not None:
        producer.bias.div_(scale.to(producer.bias.dtype))
    member.weight.mul_(scale.to(member.weight.dtype))
    if _close(output(), expected):
        return True
    for tensor, copy in saved:
        tensor.copy_(copy)
    return False


@torch.no_grad()
def _fold_into_sibling(parent: nn.Module, member: nn.Linear, scale: torch.Tensor) -> str | None:
    """Fold 1/s into the output rows of a sibling linear feeding `member` elementwise (up_proj -> down_proj),
    accepted only if the parent module's output is unchanged; returns the sibling's name."""
    siblings = {n: m for n, m in parent.named_children() if isinstance(m, nn.Linear) and m is not member}
    candidates = {n: m for n, m in siblings.items() if m.out_features == member.in_features}
    if not candidates:
        return None
    probe = _probe(next(iter(siblings.values())).in_features, member.weight)
    try:
        expected = parent(probe)
    except Exception:  # noqa: BLE001  (a parent that needs more than one tensor cannot be probed)
        return None
    for name, sibling in candidates.items():
        if _fold_rows_if_exact(sibling, member, scale, lambda: parent(probe), expected):
            return name
    return None


_VALUE_PROJECTIONS = ("v_proj", "value")  # Hugging Face's names of attention's V projection


@torch.no_grad()
def _logits(model: nn.Module) -> torch.Tensor:
    """The model's output on a fixed batch of token ids (below 16, so any vocabulary has them)."""
    ids = torch.randint(0, 16, (1, 8), generator=torch.Generator().manual_seed(0))
    out = model(ids.to(next(model.parameters()).device))
    return out.logits if hasattr(out, "logits") else out[0]


@torch.no_grad()
def _fold_into_values(model: nn.Module, attention: nn.Module, member: nn.Linear, scale: torch.Tensor) -> str | None:
    """Fold 1/s into the output rows of the V projection of `attention` when `member` (o_proj) reads its output and
    every query head has a KV head of its own: then each input channel of `member` is a V channel weighted by the
    softmax. The attention module takes more than one tensor, so the fold is checked on the whole model's logits.
    Returns the V projection's name."""
    for name in _VALUE_PROJECTIONS:
        values = getattr(attention, name, None)
        if not isinstance(values, nn.Linear) or values.out_features != member.in_features:
            continue  # grouped KV heads: fewer V channels than o_proj reads
        try:
            expected = _logits(model)
        except Exception:  # noqa: BLE001  (a model that takes more than token ids cannot be checked)
            return None
        if _fold_rows_if_exact(values, member, scale, lambda: _logits(model), expected):
            return name
    return None


@dataclass
class GroupPlan:
    """What smoothing did to one group of linears reading one input."""

    input_amax: float  # max |x| of the input the quantized GEMMs now see (x / s)
    scale: torch.Tensor | None  # s: weights multiplied by it, input divided by it (None: no smoothing)
    multiplier: torch.Tensor | None  # 1 / s the QuantLinears apply themselves, where no fold was possible
    folded_into: str | None  # the module that absorbed 1 / s (then the float weights already include s)


@torch.no_grad()
def _smooth_group(modules, config, calibration, key, members) -> GroupPlan:
    stats = calibration.inputs[key]
    quantized = [modules[name] for name in members if config.quantizes(name)]
    scale = input_scale_for(config, torch.cat([m.weight for m in quantized]), stats)
    if scale is None:
        return GroupPlan(stats.amax, None, None, None)
    amax = (stats.channel_amax / scale).max().item()
    norm_name = calibration.norms.get(key)
    if norm_name is not None and _fold_into_norm(modules[norm_name], scale):
        for name in members:  # the norm feeds every member, quantized or not
            modules[name].weight.mul_(scale.to(modules[name].weight.dtype))
        return GroupPlan(amax, scale, None, norm_name)
    if len(members) == 1 and quantized:
        parent_name = members[0].rpartition(".")[0]
        sibling = _fold_into_sibling(modules[parent_name], quantized[0], scale)
        # V's rows: not under an FP8 KV cache, whose V scale is calibrated on the unscaled V
        if sibling is None and config.kv_cache is None:
            sibling = _fold_into_values(modules[""], modules[parent_name], quantized[0], scale)
        if sibling is not None:
            return GroupPlan(amax, scale, None, f"{parent_name}.{sibling}")
    # No fold: the float model stays as it is; the QuantLinears get W diag(s) and multiply their input by 1/s.
    return GroupPlan(amax, scale, (1.0 / scale).to(quantized[0].weight.dtype), None)


def smooth(model: nn.Module, config: QuantConfig, calibration: Calibration) -> dict[str, GroupPlan]:
    """Fold every group's SmoothQuant / AWQ scale into the float model where an exact fold exists (outputs
    unchanged up to rounding); returns the plan of each group that has a linear to quantize, keyed like the
    calibration. Groups without a fold keep their float weights; `quantize_linears` scales those."""
    modules = dict(model.named_modules())
    # In call order: a later group may fold into an earlier one's weights (down_proj -> up_proj rows).
    return {
        key: _smooth_group(modules, config, calibration, key, members)
        for key, members in calibration.groups.items()
        if any(config.quantizes(name) for name in members)
    }


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _decoder_layer(name: str) -> str:
    """The module path up to its first list index ("model.layers.3"): GPTQ's unit of layer-by-layer rounding."""
    parts = name.split(".")
    index = next((i for i, part in enumerate(parts) if part.isdigit()), len(parts) - 1)
    return ".".join(parts[: index + 1])


def _layer_grams(
    model: nn.Module, calibration: Calibration, plans: dict[str, GroupPlan], keys: list[str], stop_after: str | None
) -> dict:
    """The Gram matrices (and first positions) of the inputs `keys`, summed over the calibration windows run again
    through `model` as it is now (quantized up to these inputs' layer), each forward ending after `stop_after`;
    returned as those of the unsmoothed input, as the calibration's would be: an input whose smoothing scale s was
    folded upstream arrives divided by s."""
    run = calibrate(
        model,
        windows=calibration.windows,
        samples=0,
        kv_cache=False,
        grams=set(keys),
        batch_size=calibration.batch_size,
        stop_after=stop_after,
        progress=False,
    )
    missing = [key for key in keys if key not in run.inputs or run.inputs[key].gram is None]
    if missing:
        raise RuntimeError(f"GPTQ's layer-by-layer pass did not see the inputs of {missing} again")
    grams = {}
    for key in keys:
        stats, plan = run.inputs[key], plans[key]
        if plan.scale is not None and plan.multiplier is None:
            scale = plan.scale.to(stats.gram)
            stats.gram.mul_(scale[:, None] * scale[None, :])
            stats.first_rows = [rows * scale for rows in stats.first_rows]
        grams[key] = stats
    return grams


def _quantize_group(
    model: nn.Module,
    modules: dict[str, nn.Module],
    config: QuantConfig,
    calibration: Calibration,
    key: str,
    names: list[str],
    plan: GroupPlan,
    grams: InputStats | None,
) -> None:
    """Swap the linears `names` of the group `key` for QuantLinears (GPTQ on `grams`' Gram matrices if given)."""
    linears = [modules[name] for name in names]
    scale = plan.scale.to(linears[0].weight.dtype) if plan.multiplier is not None else None
    weights = [m.weight if scale is None else m.weight * scale for m in linears]
    group, stats = calibration.groups[key], calibration.inputs[key]
    if grams is not None:
        stats = dataclasses.replace(stats, gram=grams.gram, first_rows=grams.first_rows)
    quantized = quantize_group_weights(
        config, weights, group, stats, plan.scale, plan.input_amax, dtype=weights[0].dtype
    )
    for name, linear, q in zip(names, linears, quantized, strict=True):
        bias = linear.bias.detach().clone() if linear.bias is not None else None
        _swap(model, name, QuantLinear(linear.in_features, linear.out_features, q, bias, plan.multiplier))


def quantize_linears(model: nn.Module, config: QuantConfig, calibration: Calibration, progress: bool = False) -> int:
    """Smooth, then swap every calibrated linear `config` does not exclude for a QuantLinear; returns how many.

    GPTQ rounds on the calibration's Gram matrices when it has them (`calibrate(grams=True)`: every input's, of the
    float model). Without them it goes one decoder layer at a time, as the reference implementation does: it runs
    the calibration windows again through the model quantized up to that layer, sums only that layer's matrices
    (about 0.7 GB for a 7B Llama, against 20 GB for all) and rounds the layer's linears on them."""
    plans = smooth(model, config, calibration)
    modules = dict(model.named_modules())
    quantizable = {name for name, m in modules.items() if isinstance(m, nn.Linear) and config.quantizes(name)}
    todo = {key: [name for name in calibration.groups[key] if name in quantizable] for key in plans}
    todo = {key: names for key, names in todo.items() if names}
    layers = defaultdict(list)  # in call order
    for key in todo:
        layers[_decoder_layer(key)].append(key)
    by_layer = config.rounding == "gptq" and any(calibration.inputs[key].gram is None for key in todo)
    if by_layer and calibration.windows is None:
        raise ValueError("GPTQ needs the Gram matrices of the linear inputs: calibrate with grams=True, or pass a "
                         "calibration from `calibrate` (it keeps its windows to sum them layer by layer)")  # fmt: skip
    if by_layer:
        logger.info("GPTQ: summing the Gram matrices layer by layer, %d passes over the calibration", len(layers))
    count = sum(len(names) for names in todo.values())
    with tqdm(total=count, desc=f"quantizing to {config.format}", unit="linear", disable=not progress) as bar:
        for layer, keys in layers.items():
            stop_after = layer if layer in modules and layer not in keys else None  # a layer, not a lone linear
            grams = _layer_grams(model, calibration, plans, keys, stop_after) if by_layer else {}
            for key in keys:
                _quantize_group(model, modules, config, calibration, key, todo[key], plans[key], grams.get(key))
                bar.update(len(todo[key]))
            del grams  # before the next layer's are summed
    return count


def quantize(
    model: nn.Module,
    fmt: str | QuantConfig | None = "fp8",
    calib_texts: str | list[str] | None = None,
    tokenizer=None,
    *,
    calibration: Calibration | None = None,
    progress: bool = True,
    **options,
) -> nn.Module:
    """Quantize `model` in place to `fmt` ("fp8", "int8_sq", "int4_awq", "int4_gptq", "int4_rtn", or None with
    kv_cache="fp8") and return it; `options` are QuantConfig fields (e.g. kv_cache="fp8", rounding="gptq").

    Calibrates on `calib_texts` (cut into `calib_windows` windows of `calib_window` tokens by `tokenizer`)
    unless a `calibration` of this model (from `calibrate`) is given: one calibration serves every format when
    it was made with samples (AWQ) and kv_cache=True. GPTQ rounds on its Gram matrices if it was made with
    grams=True (one pass, all of them in memory), else one decoder layer at a time (see `quantize_linears`).
    """
    config = QuantConfig.from_name(fmt, **options)
    calibration = calibration or config.calibration
    if calibration is None:
        calibration = calibrate(
            model,
            tokenizer,
            calib_texts,
            window=config.calib_window,
            max_windows=config.calib_windows,
            samples=config.calib_samples if config.needs_samples else 0,
            kv_cache=config.kv_cache is not None,
            progress=progress,
        )
    swapped = quantize_linears(model, config, calibration, progress) if config.format is not None else 0
    conv1d = [name for name, m in model.named_modules() if type(m).__name__ == "Conv1D"]
    if config.format is not None and conv1d:
        logger.warning(
            "%d GPT-2 style Conv1D GEMMs (%s, ...) stay unquantized: only nn.Linear is", len(conv1d), conv1d[0]
        )
    if config.kv_cache == "fp8":
        if not calibration.kv_amax:
            raise ValueError("kv_cache='fp8' needs K/V ranges: calibrate with kv_cache=True")
        install_fp8_kv_cache(model, {name: kv_scales(*amax) for name, amax in calibration.kv_amax.items()})
    model.trtllm_quant_config = config  # the options only: the calibration stays with the caller
    logger.info("quantized %d linears to %s (kv cache: %s)", swapped, config.format, config.kv_cache or "unchanged")
    return model
