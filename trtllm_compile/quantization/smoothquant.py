"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before INT8 W8A8.

For a group of linears reading one input x, y = x W^T = (x / s)(W diag(s))^T with, per input channel j,
s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha). Dividing by s flattens the few huge activation channels (which
per-token INT8 cannot represent next to the small ones) at the cost of larger weight ranges (which per-channel
INT8 absorbs). The 1/s is folded into whatever produces x (the preceding RMSNorm's weight) where possible, see
apply.py; the weights are multiplied by s before quantizing.
"""

from __future__ import annotations

from torch import Tensor

from trtllm_compile.quantization.calibration import InputStats

_FLOOR = 1e-5


def smoothing_scale(weight: Tensor, stats: InputStats, alpha: float) -> Tensor:
    """s [K] for `weight` [N, K] (the group's weights concatenated) and its input statistics."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"SmoothQuant alpha must lie in [0, 1], not {alpha}")
    act = stats.channel_amax.float().clamp(min=_FLOOR)
    wgt = weight.detach().abs().amax(0).float().clamp(min=_FLOOR)
    return (act.pow(alpha) / wgt.pow(1 - alpha)).clamp(min=_FLOOR)


def smooth_weight(weight: Tensor, scale: Tensor) -> Tensor:
    """W diag(s): what the GEMM must multiply once its input is divided by s."""
    return weight * scale.to(weight.dtype)
