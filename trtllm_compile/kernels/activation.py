"""The MLP activation `act(gate) * up` (SwiGLU/GeGLU) or `act(gate)`, on strided rows.

gate and up are usually the two halves of one fused gate/up GEMM output [.., 2I]: views with row stride 2I.
The kernel takes row strides, so those halves are read in place. As in eager PyTorch, `act(gate)` is computed
in fp32, rounded to gate's dtype, then multiplied by `up` in the promoted dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import autotune, is_interpreted, pdl, rows_view
from trtllm_compile.kernels.pdl import start_next_then_wait

ACTIVATION_IDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}

_CONFIGS = [triton.Config({"BLOCK": b}, num_warps=w) for b, w in ((1024, 4), (512, 4), (2048, 8), (4096, 8), (256, 2))]


@triton.jit
def tanh(x):
    # tanh from exp, portable across Triton versions and the interpreter; error ~1e-7 absolute.
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _activate(g, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:
        y = g / (1.0 + tl.exp(-g))
    elif ACTIVATION == 1:
        y = 0.5 * g * (1.0 + tl.erf(g * 0.7071067811865476))
    elif ACTIVATION == 2:  # PyTorch's tanh approximation, same constants
        y = 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)))
    else:
        y = tl.where(g > 0, g, 0.0)
    return y


@triton.jit
def _mlp_activation_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    stride_g,
    stride_u,
    stride_o,
    n_cols,
    ACTIVATION: tl.constexpr,
    HAS_UP: tl.constexpr,
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    start_next_then_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gate_ptr + row * stride_g + cols, mask=mask, other=0.0)
    y = _activate(g.to(tl.float32), ACTIVATION).to(g.dtype)
    if HAS_UP:
        u = tl.load(up_ptr + row * stride_u + cols, mask=mask, other=0.0)
        y = y.to(tl.float32) * u.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


_mlp_activation_tuned = autotune(_CONFIGS, key=["n_cols", "HAS_UP"])(_mlp_activation_kernel)
INTERPRETED: bool = is_interpreted(_mlp_activation_kernel)


def mlp_activation(gate: Tensor, up: Tensor | None, activation: str) -> Tensor:
    """`activation(gate) * up`, or `activation(gate)` when `up` is None (see `trtllm_compile.ops.mlp`)."""
    if activation not in ACTIVATION_IDS:
        raise ValueError(f"unknown activation {activation!r}; the kernel supports {sorted(ACTIVATION_IDS)}")
    if up is not None and up.shape != gate.shape:
        gate, up = torch.broadcast_tensors(gate, up)
    dtype = gate.dtype if up is None else torch.promote_types(gate.dtype, up.dtype)
    out = torch.empty(gate.shape, dtype=dtype, device=gate.device)
    n_cols = gate.shape[-1] if gate.dim() else 1
    if out.numel() == 0:
        return out
    g2, out2 = rows_view(gate), out.view(-1, n_cols)
    u2 = rows_view(up) if up is not None else g2
    grid = lambda meta: (g2.shape[0], triton.cdiv(n_cols, meta["BLOCK"]))
    _mlp_activation_tuned[grid](
        g2,
        u2,
        out2,
        g2.stride(0),
        u2.stride(0),
        out2.stride(0),
        n_cols,
        ACTIVATION=ACTIVATION_IDS[activation],
        HAS_UP=up is not None,
        **pdl.launch_args(gate.device),
    )
    return out
