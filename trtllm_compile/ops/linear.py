"""GEMMs of the runtime's step graph: `trtllm::linear`, which `passes/lower_linear.py` puts where a frozen
weight feeds `aten.linear`.

The body is `F.linear` (the reference, and what runs on CPU). The `cuda` target's kernel
(`trtllm_compile.kernels.gemv.linear`) runs decode-sized inputs (at most 16 rows, fp16/bf16) on a Triton GEMV
that streams the weight faster than cuBLAS does at those shapes, and everything else on `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.ops.library import custom_op


@custom_op("trtllm::linear", mutates_args=())
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """x @ weight.T + bias, with weight [N, K] and x [..., K] (`F.linear`). `out_dtype` (float32 for half
    inputs): the fp32 sums as they are, not rounded to x's dtype (a row-parallel GEMM's partial sums, see
    passes/widen_partial_sums.py)."""
    if out_dtype is None or out_dtype == x.dtype:
        return F.linear(x, weight, bias)
    # Half-precision products are exact in fp32, so this is the GEMM's fp32 accumulation, unrounded.
    return F.linear(x.to(out_dtype), weight.to(out_dtype), None if bias is None else bias.to(out_dtype))


@linear.register_fake
def _(x: Tensor, weight: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=out_dtype or x.dtype)
