"""Weight quantization numerics of each format, shared by the module path (quantize) and the graph pass.

`quantize_weight` turns one float weight (already multiplied by any smoothing / AWQ scale) and its calibrated
input range into the tensors of one quantized op; `QuantizedWeight.op` names the op that consumes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.ops.quant import FP8_MAX, INT8_MAX, fp8_quantize, int8_quantize, pack_int4
from trtllm_compile.quantization.config import QuantConfig

_EPS = 1e-12


@dataclass
class QuantizedWeight:
    """The tensors of one quantized GEMM. `op` is "fp8_linear", "int8_linear" or "int4_linear" (trtllm ops).

    fp8/int8: weight [N, K] and weight_scale [] or [N]; input_scale [] (static) or None (dynamic per-token).
    int4: weight [N, K / 2] uint8, scales and zeros (None when symmetric) [N, K / group_size].
    """

    op: str
    weight: Tensor
    weight_scale: Tensor
    zeros: Tensor | None = None
    input_scale: Tensor | None = None
    group_size: int = 0


def _row_scales(weight: Tensor, qmax: float, per_tensor_rows: list[int] | None) -> Tensor:
    """[N] scales of amax / qmax per row, or per block of rows (per-tensor scales of concatenated weights)."""
    amax = weight.abs().amax(1).float()
    if per_tensor_rows is not None:
        amax = torch.cat([part.max().expand(len(part)) for part in amax.split(per_tensor_rows)])
    return (amax / qmax).clamp(min=_EPS)


def _int4_grid(groups: Tensor, zero_point: bool, clip: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Scales and zero points of groups [N, G, g]."""
    if zero_point:
        high, low = groups.amax(-1).clamp_(min=0), groups.amin(-1).clamp_(max=0)
        if clip is not None:
            high, low = high * clip, low * clip
        scales = ((high - low) / 15).clamp_(min=_EPS)
        return scales, (-low / scales).round_().clamp_(0, 15)
    amax = groups.abs().amax(-1)
    return (amax * clip if clip is not None else amax).div_(7).clamp_(min=_EPS), None


def _groups(weight: Tensor, group_size: int) -> Tensor:
    rows, cols = weight.shape
    if cols % 2:
        raise ValueError(f"INT4 packs two inputs per byte: in_features {cols} must be even")
    padded = weight.float() if cols % group_size == 0 else F.pad(weight.float(), (0, -cols % group_size))
    return padded.view(rows, -1, group_size)


def _int4_codes(values: Tensor, scales: Tensor, zeros: Tensor | None) -> Tensor:
    """Codes in [0, 15] of `values` on a grid of `scales` and `zeros` (None: symmetric, zero point 8), all of one
    broadcastable shape."""
    codes = (values / scales).round_()
    return codes.add_(zeros).clamp_(0, 15) if zeros is not None else codes.clamp_(-8, 7).add_(8)


def _int4_values(values: Tensor, scales: Tensor, zeros: Tensor | None) -> Tensor:
    return _int4_codes(values, scales, zeros).sub_(zeros if zeros is not None else 8).mul_(scales)


def int4_codes(
    weight: Tensor, group_size: int, zero_point: bool, clip: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Round-to-nearest INT4 per group: codes [N, K] in [0, 15], scales and zeros (or None) [N, ceil(K / g)].

    Asymmetric groups span [min(w, 0), max(w, 0)] (zero stays representable, so constant groups survive);
    symmetric groups use amax / 7 with the zero point fixed at 8. When K is not a multiple of the group size
    (SmolLM2's 576 and g = 128), the last group is shorter: zero padding changes neither range. `clip`
    [N, ceil(K / g)] shrinks each group's range by that ratio (AWQ's clipping), saturating the extremes.
    """
    scales, zeros = _int4_grid(_groups(weight, group_size), zero_point, clip)
    return WeightGrid("int4", scales, zeros, group_size).int4_codes(weight), scales, zeros


def fake_quantize_int4(weight: Tensor, group_size: int, zero_point: bool, clip: Tensor | None = None) -> Tensor:
    """What INT4 round-to-nearest makes of `weight`, in float32 (the AWQ search's inner loop: kept lean)."""
    groups = _groups(weight, group_size)
    scales, zeros = _int4_grid(groups, zero_point, clip)
    values = _int4_values(groups, scales[..., None], zeros[..., None] if zeros is not None else None)
    return values.view(weight.shape[0], -1)[:, : weight.shape[1]]


@dataclass(frozen=True)
class WeightGrid:
    """The values one weight may be rounded to, fixed before rounding: `quantize_weight` encodes on it, and GPTQ
    (gptq.py) rounds column by column on it. FP8 and INT8: one scale per row, scales [N]. INT4: a scale and
    (asymmetric) a zero point per row and group, [N, ceil(K / group_size)]. Scales are float32 holding the
    values the quantized op will use (a half-precision model's INT4 scales already rounded to its dtype)."""

    kind: str  # "fp8", "int8" or "int4"
    scales: Tensor
    zeros: Tensor | None = None
    group_size: int = 0

    def round(self, values: Tensor, columns: Tensor | None = None) -> Tensor:
        """The grid values (float32) nearest to `values` [N, n], which hold the weight's columns `columns` (all of
        them, in order, by default)."""
        if self.kind != "int4":
            scales = self.scales[:, None]
            codes = fp8_quantize(values, scales) if self.kind == "fp8" else int8_quantize(values, scales)
            return codes.float() * scales
        if columns is None:
            columns = torch.arange(values.shape[1], device=values.device)
        group = columns // self.group_size
        return _int4_values(
            values.float(), self.scales[:, group], self.zeros[:, group] if self.zeros is not None else None
        )

    @staticmethod
    def stack(grids: list[WeightGrid]) -> WeightGrid:
        """The grid of the weights of `grids` concatenated along their rows (one kind and group size)."""
        first = grids[0]
        if any(g.kind != first.kind or g.group_size != first.group_size for g in grids):
            raise ValueError("only grids of one kind and group size stack")
        zeros = None if first.zeros is None else torch.cat([g.zeros for g in grids])
        return WeightGrid(first.kind, torch.cat([g.scales for g in grids]), zeros, first.group_size)

    def int4_codes(self, weight: Tensor) -> Tensor:
        """[N, K] codes in [0, 15] of the whole weight (INT4 grids)."""
        groups = _groups(weight, self.group_size)
        codes = _int4_codes(groups, self.scales[..., None], self.zeros[..., None] if self.zeros is not None else None)
        return codes.view(weight.shape[0], -1)[:, : weight.shape[1]]


def weight_grid(
    config: QuantConfig, weight: Tensor, row_splits: list[int] | None = None, dtype: torch.dtype | None = None
) -> WeightGrid:
    """The grid round-to-nearest puts `weight` [N, K] on: its ranges set the scales (see `quantize_weight`)."""
    weight = weight.detach().float()
    if config.format == "fp8":
        per_tensor = config.weight_scales == "tensor"
        return WeightGrid("fp8", _row_scales(weight, FP8_MAX, (row_splits or [len(weight)]) if per_tensor else None))
    if config.format == "int8_sq":
        return WeightGrid("int8", _row_scales(weight, INT8_MAX, None))
    if config.is_int4:
        scales, zeros = _int4_grid(_groups(weight, config.group_size), config.zero_point, None)
        if (dtype or weight.dtype) in (torch.float16, torch.bfloat16):
            # A half-precision model keeps its group scales and zero points (0..15, exact) in its dtype, as AWQ
            # checkpoints do: the GPU GEMV reads 4 bytes a group and row, not 8, and TensorRT's block-scaled DQ
            # rounds the scales so anyway. Rounding on the scales it will use keeps the codes the nearest ones.
            scales = scales.to(dtype).float().clamp_(min=_EPS)
        return WeightGrid("int4", scales, zeros, config.group_size)
    raise ValueError(f"no weight quantization for format {config.format!r}")


def quantize_weight(
    config: QuantConfig,
    weight: Tensor,
    input_amax: float | None,
    row_splits: list[int] | None = None,
    dtype: torch.dtype | None = None,
    grid: WeightGrid | None = None,
) -> QuantizedWeight:
    """Quantize one [N, K] weight for `config.format`.

    input_amax: the calibrated max |x| of the (smoothed) input, for static activation scales.
    row_splits: output rows of each original weight when `weight` concatenates several (fused Q/K/V): per-tensor
        weight scales are then computed per part and expanded to one scale per row.
    dtype: the model's (default: the weight's); a half-precision model keeps its INT4 group scales and zero points in
        it.
    grid: the grid to encode on (default: `weight_grid` of this weight); GPTQ passes the one it rounded on, so that
        its values encode exactly.
    """
    dtype = dtype or weight.dtype
    grid = grid or weight_grid(config, weight, row_splits, dtype)
    weight = weight.detach().float()
    if grid.kind == "int4":
        codes = grid.int4_codes(weight)
        scales, zeros = grid.scales, grid.zeros
        if dtype in (torch.float16, torch.bfloat16):
            scales, zeros = scales.to(dtype), zeros.to(dtype) if zeros is not None else None
        return QuantizedWeight("int4_linear", pack_int4(codes), scales, zeros=zeros, group_size=grid.group_size)
    scale = grid.scales
    if config.weight_scales == "tensor" and row_splits is None and grid.kind == "fp8":
        scale = scale[0].clone()
    if grid.kind == "fp8":
        quantized = fp8_quantize(weight, scale[:, None] if scale.dim() else scale)
        return QuantizedWeight(
            "fp8_linear", quantized, scale, input_scale=_input_scale(config, input_amax, FP8_MAX, weight.device)
        )
    quantized = int8_quantize(weight, scale[:, None])
    return QuantizedWeight(
        "int8_linear", quantized, scale, input_scale=_input_scale(config, input_amax, INT8_MAX, weight.device)
    )


def _input_scale(config: QuantConfig, input_amax: float | None, qmax: float, device: torch.device) -> Tensor | None:
    if config.activations == "dynamic":
        return None
    if input_amax is None:
        raise ValueError("static activation scales need a calibration; calibrate first or use activations='dynamic'")
    return torch.tensor(max(input_amax, 1e-6) / qmax, dtype=torch.float32, device=device)  # beside the weight
