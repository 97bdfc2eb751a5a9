"""Quantize the GEMMs of a graph captured from an unquantized model, given a calibration of that model.

aten.linear(x, W, b) with a frozen W  ->  trtllm::{fp8,int8,int4}_linear(x', Wq, scales..., b)

The compile options carry a `QuantConfig` whose `calibration` (from `trtllm_compile.quantization.calibrate`) is
keyed by module name; a weight is traced back to its module through the "frozen_from" meta capture leaves on
it (Dynamo's mangled parameter names are demangled first). A weight that fuse_gemms concatenated (Q/K/V,
gate/up) is quantized as one: its parts share one input, so they share the input statistics and one smoothing
or AWQ scale searched over the concatenated weight, and per-tensor FP8 weight scales are kept per part (one
scale per row, repeated within each part). Linears reading one input are smoothed together even when unfused.
The smoothing 1/s goes into the producing norm's weight when every reader of the norm is in the group, into the
up rows of the gated MLP that produces a down_proj's input, or into the V rows of a multi-head attention that
produces an o_proj's input (as quantize() folds them), else into an explicit multiply. Linears that
`QuantConfig.exclude` names (the LM head by default) stay as they are.
"""

from __future__ import annotations

import logging
import operator
from collections import defaultdict

import torch
import torch.fx

from trtllm_compile.capture import STEP_MODEL_ATTRIBUTE
from trtllm_compile.fx_utils import aten, constant_of, insert_constant, is_op, last_dim_slice, val
from trtllm_compile.passes.registry import Stage, register_pass
from trtllm_compile.quantization.apply import input_scale_for, quantize_group_weights
from trtllm_compile.quantization.calibration import Calibration
from trtllm_compile.quantization.formats import QuantizedWeight

logger = logging.getLogger(__name__)

trtllm = torch.ops.trtllm


def _sanitized(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _demangled(name: str) -> str:
    """Dynamo's "L['self']._modules['model']...._parameters['weight']" placeholder name -> "model....weight"."""
    name = name.strip("_").removeprefix("self_")
    if "_parameters_" not in name and not name.startswith("modules_"):
        return name
    return name.removeprefix("modules_").replace("_modules_", ".").replace("_parameters_", ".")


class LinearNames:
    """Resolves a graph weight to the calibrated linear module(s) it came from."""

    def __init__(self, calibration: Calibration):
        members = (name for group in calibration.groups.values() for name in group)
        self.by_key = {_sanitized(f"{name}.weight"): name for name in members}

    def one(self, name: str | None) -> str | None:
        if not name:
            return None
        key = _sanitized(_demangled(name))
        # A whole-model export (runtime, TensorRT) captures the model as CausalLMStep's `model` attribute.
        return self.by_key.get(key) or self.by_key.get(key.removeprefix(f"{STEP_MODEL_ATTRIBUTE}_"))

    def of(self, weight: torch.fx.Node) -> list[str] | None:
        """Module names of the weight's parts (several for a fused weight), or None if unknown."""
        if weight.meta.get("fused_from"):
            parts = [self.one(name) for name in weight.meta["fused_from"]]
            return parts if all(parts) else None
        if weight.meta.get("frozen_from"):
            part = self.one(weight.meta["frozen_from"])
            return [part] if part else None
        if isinstance(weight.target, str) and weight.target.endswith("_fused"):
            # fuse_gemms names the concatenation after its first part; the parts share that part's input
            first = self.one(weight.target.removesuffix("_fused"))
            return [first] if first else None
        return None


def row_splits(linear: torch.fx.Node) -> list[int] | None:
    """Output rows of each part of a fused GEMM, read from the slices fuse_gemms put on its output."""
    spans = [last_dim_slice(user) for user in linear.users]
    if not spans or None in spans:
        return None
    spans.sort()
    if spans[0][0] != 0 or any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)):
        return None
    return [end - start for start, end in spans]


def _norm_weight_slot(x: torch.fx.Node) -> tuple[torch.fx.Node, int, int | None, bool] | None:
    """(norm node, weight arg index, bias arg index, unit offset) when `x` is a norm op's normalized output."""
    if is_op(x, trtllm.rms_norm.default):
        return x, 1, None, bool(x.args[3] if len(x.args) > 3 else x.kwargs.get("unit_offset", False))
    if x.op == "call_function" and x.target is operator.getitem and x.args[1] == 0:
        norm = x.args[0]
        if is_op(norm, trtllm.add_rms_norm.default):
            return norm, 2, None, bool(norm.args[4] if len(norm.args) > 4 else norm.kwargs.get("unit_offset", False))
    if is_op(x, trtllm.layer_norm.default):
        return x, 1, 2, False
    return None


def _fold_into_norm(gm, x: torch.fx.Node, scale: torch.Tensor) -> bool:
    slot = _norm_weight_slot(x)
    if slot is None:
        return False
    norm, weight_index, bias_index, unit_offset = slot
    weight = constant_of(gm, norm.args[weight_index])
    bias = constant_of(gm, norm.args[bias_index]) if bias_index is not None else None
    if (
        weight is None
        or weight.shape != scale.shape
        or (bias_index is not None and norm.args[bias_index] is not None and bias is None)
    ):
        return False
    offset = 1.0 if unit_offset else 0.0
    folded = ((weight.float() + offset) / scale - offset).to(weight.dtype)
    norm.update_arg(weight_index, insert_constant(gm, folded, f"{norm.args[weight_index].target}_smoothed"))
    if bias is not None:
        norm.update_arg(bias_index, insert_constant(gm, (bias.float() / scale).to(bias.dtype), "norm_bias_smoothed"))
    return True


def _divide_rows(gm, linear: torch.fx.Node, rows: slice, scale: torch.Tensor) -> bool:
    """Divide output rows `rows` of a float GEMM (weight and bias constants only it reads) by s."""
    if not is_op(linear, aten.linear.default) or len(linear.args[1].users) != 1:
        return False
    weight = constant_of(gm, linear.args[1])
    bias_node = linear.args[2] if len(linear.args) > 2 else None
    bias = constant_of(gm, bias_node)
    if weight is None or weight[rows].shape[0] != scale.numel() or (bias_node is not None and bias is None):
        return False
    for index, tensor in ((1, weight), (2, bias)):
        if tensor is not None:
            folded = tensor.detach().clone()
            scale_rows = scale.to(tensor.dtype)
            folded[rows] = tensor[rows] / (scale_rows[:, None] if tensor.dim() == 2 else scale_rows)
            linear.update_arg(index, insert_constant(gm, folded, f"{linear.args[index].target}_smoothed"))
    return True


def _gemm_rows(node: torch.fx.Node) -> tuple[torch.fx.Node, slice]:
    """(GEMM, its output rows) behind `node`: a slice of a fused GEMM's last dim that only it reads, or all rows."""
    span = last_dim_slice(node)
    if span is not None and len(node.users) == 1:
        return node.args[0], slice(*span)
    return node, slice(None)


def _fold_into_up_rows(gm, x: torch.fx.Node, scale: torch.Tensor) -> bool:
    """act(gate) * up / s (`x`, a gated trtllm.mlp_activation) by dividing the rows of the GEMM that makes `up`
    (its slice of a fused gate/up GEMM, or a GEMM of its own) by s, as quantize() divides up_proj's rows."""
    if not is_op(x, trtllm.mlp_activation.default) or x.args[1] is None or len(x.args[1].users) != 1:
        return False
    return _divide_rows(gm, *_gemm_rows(x.args[1]), scale)


_VIEWS = (aten.view.default, aten.reshape.default, aten._unsafe_view.default)


def _heads_transpose(node: torch.fx.Node) -> bool:
    """`node` swaps a 4-D tensor's sequence and head dims ([B, S, H, D] <-> [B, H, S, D]) for it alone."""
    return is_op(node, aten.transpose.int) and val(node).dim() == 4 and {d % 4 for d in node.args[1:3]} == {1, 2}


def _split_heads(view: torch.fx.Node, width: int) -> bool:
    """`view` only splits (or merges) the last dim between [..., width] and [..., H, D] with H * D = width."""
    if not is_op(view, *_VIEWS) or len(view.users) != 1:
        return False
    before, after = val(view.args[0]).shape, val(view).shape
    split, merged = (after, before) if len(after) > len(before) else (before, after)
    return len(split) == len(merged) + 1 and split[:-2] == merged[:-1] and split[-2] * split[-1] == merged[-1] == width


def _fold_into_v_rows(gm, x: torch.fx.Node, scale: torch.Tensor) -> bool:
    """x / s where x is attention's output with its heads merged ([B, H, S, D] -> [B, S, H * D]) and every query
    head has a KV head of its own: channel h * D + d of x is V's channel h * D + d weighted by the softmax, so the
    rows of the GEMM making V divide by s instead (o_proj's input; quantize() folds into v_proj alike). Not with
    grouped KV heads (one V channel serves several x channels), nor when anything but views and transposes sits
    between the GEMM, the attention and x (an FP8 KV cache's Q/DQ: its calibrated V scale would no longer fit),
    nor when V also leaves the graph (a Hugging Face cache, which a later graph that cannot fold would read)."""
    width = scale.numel()
    if not _split_heads(x, width) or not _heads_transpose(x.args[0]) or len(x.args[0].users) != 1:
        return False
    attention = x.args[0].args[0]
    if not is_op(attention, trtllm.attention.default) or len(attention.users) != 1:
        return False
    q, v = attention.args[0], attention.args[2]
    if val(q).shape[1] != val(v).shape[1] or not _heads_transpose(v) or len(v.users) != 1:
        return False
    heads = v.args[0]
    return _split_heads(heads, width) and _divide_rows(gm, *_gemm_rows(heads.args[0]), scale)


def _scaled_input(
    gm, x: torch.fx.Node, readers: list[torch.fx.Node], scale: torch.Tensor, fold_values: bool
) -> torch.fx.Node:
    """x / s for the group's readers: folded into the norm producing x, the up rows of the gated MLP producing
    it, or (`fold_values`) the V rows of the attention producing it, if only they read it; else multiplied."""
    if set(x.users) == set(readers) and (
        _fold_into_norm(gm, x, scale)
        or _fold_into_up_rows(gm, x, scale)
        or (fold_values and _fold_into_v_rows(gm, x, scale))
    ):
        return x
    multiplier = insert_constant(gm, (1.0 / scale).to(val(x).dtype), "quant_input_multiplier")
    with gm.graph.inserting_after(x):
        scaled = gm.graph.call_function(aten.mul.Tensor, (x, multiplier))
    scaled.meta["val"] = val(x)
    return scaled


def _replace(gm, linear: torch.fx.Node, x: torch.fx.Node, quantized: QuantizedWeight, config, parts) -> None:
    bias = linear.args[2] if len(linear.args) > 2 else linear.kwargs.get("bias")
    name = linear.args[1].target
    tensors = [
        insert_constant(gm, quantized.weight, f"{name}_q"),
        insert_constant(gm, quantized.weight_scale, f"{name}_scale"),
    ]
    with gm.graph.inserting_before(linear):
        if quantized.op == "int4_linear":
            zeros = insert_constant(gm, quantized.zeros, f"{name}_zeros") if quantized.zeros is not None else None
            args = (x, *tensors, zeros, quantized.group_size, bias)
        else:
            input_scale = quantized.input_scale
            input_scale = insert_constant(gm, input_scale, f"{name}_input_scale") if input_scale is not None else None
            args = (x, *tensors, input_scale, bias)
        node = gm.graph.call_function(getattr(trtllm, quantized.op).default, args)
    node.meta["val"] = val(linear)
    node.meta["quantization"] = {"format": config.format, "modules": list(parts)}
    linear.replace_all_uses_with(node)
    gm.graph.erase_node(linear)


@register_pass(Stage.QUANTIZE)
def quantize_linear(gm: torch.fx.GraphModule, config) -> int:
    """aten.linear(x, W_frozen, b) -> trtllm::{fp8,int8,int4}_linear with calibrated scales (QuantConfig)."""
    qconfig = getattr(config, "quantization", None)
    if qconfig is None or qconfig.format is None:
        return 0
    calibration = qconfig.calibration
    if calibration is None:
        raise ValueError(
            "the quantization option has no calibration: pass QuantConfig.from_name(fmt).with_calibration("
            "trtllm_compile.quantization.calibrate(model, tokenizer, texts))"
        )
    names = LinearNames(calibration)
    readers: dict[tuple, list[tuple[torch.fx.Node, list[str]]]] = defaultdict(list)
    for node in gm.graph.nodes:
        if not is_op(node, aten.linear.default) or constant_of(gm, node.args[1]) is None:
            continue
        parts = names.of(node.args[1])
        if parts is None:
            logger.debug("%s: weight %s has no calibrated module; left unquantized", node.name, node.args[1].target)
        elif all(qconfig.quantizes(part) for part in parts):
            readers[(node.args[0], calibration.group_key(parts[0]))].append((node, parts))
    # fuse_gemms' concatenations, read before a fold gives a weight a new constant
    fused = {
        node: len(parts) > 1 or node.args[1].target.endswith("_fused") for g in readers.values() for node, parts in g
    }
    scales = {}
    for (x, key), group in readers.items():
        weights = [constant_of(gm, node.args[1]).detach().float() for node, _ in group]
        scales[x, key] = input_scale_for(qconfig, torch.cat(weights), calibration.inputs[key])
    # Every group's 1/s goes in before any weight is rounded: a later group's may go into an earlier one's rows
    # V's rows take o_proj's 1/s unless an FP8 KV cache will round V with a scale calibrated on the unscaled V
    fold_values = qconfig.kv_cache is None
    inputs = {
        (x, key): x
        if scale is None
        else _scaled_input(gm, x, [node for node, _ in readers[x, key]], scale, fold_values)
        for (x, key), scale in scales.items()
    }
    for (x, key), group in readers.items():
        stats, scale = calibration.inputs[key], scales[x, key]
        weights = [constant_of(gm, node.args[1]).detach().float() for node, _ in group]
        amax = stats.amax
        if scale is not None:
            amax = (stats.channel_amax / scale).max().item()
            weights = [w * scale for w in weights]
        splits = [row_splits(node) if fused[node] else None for node, _ in group]
        members, dtype = calibration.groups[key], val(group[0][0]).dtype
        quantized = quantize_group_weights(qconfig, weights, members, stats, scale, amax, splits, dtype)
        for (node, parts), weight in zip(group, quantized, strict=True):
            _replace(gm, node, inputs[x, key], weight, qconfig, parts)
    return sum(len(group) for group in readers.values())
