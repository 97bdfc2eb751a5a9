"""Static per-tensor FP8 quantization of activation rows, for the FP8 GEMM of more rows than the GEMV takes.

`ops.quant.fp8_quantize` (x times 1 / scale, saturated to +-448, rounded to E4M3) in one launch instead of five
(cast to fp32, reciprocal, multiply, clamp, cast), writing the zero rows that pad M to cuBLASLt's multiple of 16
in the same launch. At 256 decode rows those launches, four GEMMs a layer, cost an H100 more than FP8 saved in
the GEMMs themselves (docs/benchmarks.md, 2026-11-26).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import is_interpreted, pdl
from trtllm_compile.kernels.pdl import start_next_then_wait

BLOCK = 1024


@triton.jit
def inverse_scale(scale_ptr):
    """1 / scale, correctly rounded as torch's reciprocal is: what `ops.quant.fp8_quantize` multiplies by."""
    return tl.math.div_rn(1.0, tl.load(scale_ptr))


@triton.jit
def to_e4m3(x, inv_scale):
    """`ops.quant.fp8_quantize` of x given 1 / scale: the fp32 product, saturated to +-448, rounded to E4M3."""
    return tl.minimum(tl.maximum(x.to(tl.float32) * inv_scale, -448.0), 448.0).to(tl.float8e4nv)


@triton.jit
def _fp8_quantize_rows_kernel(x_ptr, scale_ptr, y_ptr, M, K, stride_xm, BLOCK: tl.constexpr, PDL: tl.constexpr):
    start_next_then_wait(PDL)
    row, pid_k = tl.program_id(0), tl.program_id(1)
    offs = pid_k * BLOCK + tl.arange(0, BLOCK)
    in_k = offs < K
    real_row = (tl.zeros([BLOCK], dtype=tl.int32) + row) < M  # padding rows read nothing and store zeros
    x = tl.load(x_ptr + row.to(tl.int64) * stride_xm + offs, mask=in_k & real_row, other=0.0)
    tl.store(y_ptr + row.to(tl.int64) * K + offs, to_e4m3(x, inverse_scale(scale_ptr)), mask=in_k)


INTERPRETED: bool = is_interpreted(_fp8_quantize_rows_kernel)


def supports(x2: Tensor, scale: Tensor) -> bool:
    """[M, K] rows of unit column stride and a per-tensor scale, on a GPU (or the interpreter). The caller
    (`ops.quant.fp8_linear`) has checked that the GPU converts E4M3 (compute capability 8.9 or newer)."""
    if x2.dim() != 2 or x2.stride(1) != 1 or scale.numel() != 1:
        return False
    return INTERPRETED or x2.device.type == "cuda"


def fp8_quantize_rows(x2: Tensor, scale: Tensor, rows: int) -> Tensor:
    """x2 [M, K] and scale [] -> [rows, K] float8_e4m3fn (`supports` must hold); rows M.. are zeros."""
    m, k = x2.shape
    if rows < m:
        raise ValueError(f"cannot quantize {m} rows into {rows}")
    y = torch.empty((rows, k), dtype=torch.float8_e4m3fn, device=x2.device)
    scale = scale.float().reshape(())
    _fp8_quantize_rows_kernel[(rows, triton.cdiv(k, BLOCK))](
        x2, scale, y, m, k, x2.stride(0), BLOCK=BLOCK, **pdl.launch_args(x2.device)
    )
    return y
