"""AWQ (Lin et al., 2024): activation-aware scales for INT4 weight-only quantization.

Weights that meet large activations matter most. Scaling input channel j of the weight by s_j before rounding
(and dividing the input by s_j) shrinks those channels' relative rounding error. AWQ takes s = mean|x|^alpha,
normalized so that sqrt(max(s) min(s)) = 1, and grid-searches alpha per group of linears (those sharing an
input: Q/K/V, gate/up) to minimize the error of the group's outputs on calibration tokens:

    || x W^T  -  (x / s) Q(W diag(s))^T ||^2

alpha = 0 is plain round-to-nearest, so the chosen scale is never worse than RTN on the calibration set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.quantization.calibration import InputStats
from trtllm_compile.quantization.formats import fake_quantize_int4

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleSearch:
    """The outcome of one group's search: the scale (weights times s, inputs divided by s) and the errors."""

    scale: Tensor
    alpha: float
    error: float  # mean squared output error with the chosen scale
    rtn_error: float  # ... with no scale (alpha = 0)


def _output_error(x: Tensor, weight: Tensor, reference: Tensor, scale: Tensor, group_size: int, zp: bool) -> float:
    quantized = fake_quantize_int4(weight * scale, group_size, zp) / scale
    return (x @ quantized.T - reference).pow(2).mean().item()


@torch.no_grad()
def search_scale(weight: Tensor, stats: InputStats, group_size: int, zero_point: bool, grid: int = 20) -> ScaleSearch:
    """Search alpha in {0, 1/grid, ..., (grid - 1)/grid} for `weight` [N, K] (a group's weights concatenated)."""
    x = stats.samples
    if x.shape[0] == 0:
        raise ValueError("AWQ needs calibration samples of each linear input: calibrate with samples > 0")
    weight = weight.detach().float()
    reference = x @ weight.T
    salience = stats.mean_abs.clamp(min=1e-4)
    best = None
    rtn_error = None
    for step in range(grid):
        alpha = step / grid
        scale = salience.pow(alpha)
        scale = scale / (scale.max() * scale.min()).sqrt()
        error = _output_error(x, weight, reference, scale, group_size, zero_point)
        if step == 0:
            rtn_error = error
        if best is None or error < best.error:
            best = ScaleSearch(scale, alpha, error, rtn_error)
    logger.debug("AWQ alpha %.2f: output MSE %.3g (RTN %.3g)", best.alpha, best.error, rtn_error)
    return best


@torch.no_grad()
def clip_weight(
    weight: Tensor, x: Tensor, group_size: int, zero_point: bool, grid: int = 20, max_shrink: float = 0.5
) -> Tensor:
    """AWQ's clipping: per row and group, shrink the quantization range by the ratio in {1, 1 - 1/grid, ...,
    1 - max_shrink} that minimizes the error of that group's partial dot products on the tokens `x` (already
    divided by the input scale); returns the weight clamped to the chosen ranges, ready for round-to-nearest."""
    weight = weight.detach().float()
    rows, cols = weight.shape
    pad = -cols % group_size
    tokens = F.pad(x.float(), (0, pad)).view(x.shape[0], -1, group_size)
    groups = tokens.shape[1]
    best_error = torch.full((rows, groups), float("inf"), device=weight.device)
    best_ratio = torch.ones(rows, groups, device=weight.device)
    for step in range(int(max_shrink * grid) + 1):
        ratio = torch.full((rows, groups), 1.0 - step / grid, device=weight.device)
        delta = F.pad(fake_quantize_int4(weight, group_size, zero_point, ratio) - weight, (0, pad))
        error = torch.einsum("tgk,ngk->tng", tokens, delta.view(rows, groups, group_size)).pow(2).mean(0)
        better = error < best_error
        best_error = torch.where(better, error, best_error)
        best_ratio = torch.where(better, ratio, best_ratio)
    padded = F.pad(weight, (0, pad)).view(rows, groups, group_size)
    high = padded.amax(-1, keepdim=True).clamp(min=0) * best_ratio[..., None]
    low = padded.amin(-1, keepdim=True).clamp(max=0) * best_ratio[..., None]
    if not zero_point:
        high = torch.maximum(high, -low)
        low = -high
    return torch.minimum(torch.maximum(padded, low), high).view(rows, -1)[:, :cols].to(weight.dtype)
