"""INT4 weight-only GEMMs: the CUDA implementation of `trtllm::int4_linear` (see `ops.quant.int4_linear`).

The weight is read in the op's own format, with no repacked copy: [N, K / 2] uint8, element 2i in the low
nibble of byte i and 2i + 1 in the high one, which read as little-endian int32 is [N, K / 8] words holding
elements 8i..8i + 7 in bits 4j..4j + 3. Scales and integer zero points are per row and group of `group_size`
along K (no zero points: 8). The kernels are gemv.py's, given `gemv.Int4Weights` (with its launcher and split-K
reduce, and kernels/tuning.py's plan tuner):

- Each program owns BLOCK_N weight rows and walks K in tiles of whole words, loaded up to 16 bytes a thread and
  streamed once (evict-first). A tile lies in one group (BLOCK_K divides the group size), so each row's scale
  and zero point are loaded once a tile. `gemv.int4_codes` turns a word into eight fp32 codes minus the zero
  point with a shift, a LOP3 and an FADD each: the code is OR-ed into the mantissa of 2^23 and 2^23 + zero
  subtracted, with no int -> float conversion (a quarter-rate instruction).
- fma path (up to 4 rows): CUDA-core FMAs in fp32. The eight products of a word are summed in the thread and
  the group scale multiplies that sum once: sum_k x_k s_g (q_k - z_g) = s_g * sum_k x_k (q_k - z_g).
- dot path (any rows): the codes minus zero points, exact in bf16/fp16, meet x on the tensor cores (fp32
  sums) and each tile's sums are scaled once by their group's scales. Above 16 rows the same kernel takes
  BLOCK_M = 32..128 rows a program: a GEMM that dequantizes each W tile into the tensor cores and so reads
  half a byte a weight, where dequantizing to bf16 first would read 0.5, write 2 and read 2 again. For
  batched decode (17..256 rows) the GEMM is still bound by the weight stream, so that is the default there;
  from 512 rows (prefill) it is compute-bound and the default is `DEQUANTIZE_CUBLAS`: a Triton kernel writes
  the weight in x's dtype, then cuBLAS, whose tiles should beat these untuned ones once the dequantization
  is shared by 512+ rows. Neither choice is measured yet: the tuner times both from 32 rows on.

Numerics: codes minus zero points and products are exact; sums are fp32, rounded once to x's dtype after the
bias. The reference instead rounds each dequantized weight (q - z) * s to x's dtype before its GEMM (so do
`DEQUANTIZE_CUBLAS` and the dot path's GEMM tiles, identically), which moves each product by up to one ulp
of x's dtype: tests/kernels/test_gemv_int4_kernels.py states the tolerance this gives.

torch's tinygemm (`ops.quant.int4_linear_tinygemm`) is off this path although it is faster at one row (65 against
87 us a Llama-2-7B layer on an H100, docs/benchmarks.md run 19): it reads a repacked second copy of the weight,
made on first use, after the KV cache has taken the free memory; as a tuner plan it made `bench --quantization
int4_awq` fail every plan at 4 rows after the batch-256 CUDA graphs (run 19). These kernels
take every shape it takes; what they cannot take (K % 8 != 0, a group size without a factor of 16, fp32
activations) runs the op's PyTorch reference.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl
from torch import Tensor

from trtllm_compile.kernels import gemv, is_interpreted, tuning
from trtllm_compile.kernels.gemv import CUBLAS, HALF_DTYPES, Int4Weights, Plan, dot_plan, fma_plan, int4_codes, w_tile

# Dequantize the weight to x's dtype in a Triton kernel, then cuBLAS (a plan of the INT4 candidates).
DEQUANTIZE_CUBLAS = CUBLAS
MIN_BLOCK_K = 16  # the tensor cores' K: a group size needs a power-of-two factor this large
_LARGEST_BUCKET = 512  # every bucket of more rows shares its candidates

# Candidates per M bucket (next power of two of M), the first being the default when tuning is off. Written
# for group size 128 (BLOCK_K is cut to divide a smaller group, `fit`), not yet timed on a GPU: fma tiles of
# 32 to 128 rows (BLOCK_K <= group, so rows give a program its work), dot tiles of 64 to 256 rows, split-K for
# the narrow N of o_proj and down_proj (4096 rows: 32..64 programs without it). Dot plans lead: compiled for
# sm_90 (triton 3.6 and 3.9), their loops cost 5.8-6.7 instructions a weight at any row count up to 16, the
# fma loops 6.6-6.8 at one row and 15-16 at four, and dequantizing is what bounds these kernels.
_DOT_PLANS = [
    dot_plan(64, 128, split_k=4),
    dot_plan(128, 128, num_stages=3),
    dot_plan(128, 128, split_k=4, num_stages=3),
    dot_plan(64, 128),
    dot_plan(256, 128, num_warps=8, num_stages=3),
    dot_plan(128, 64, split_k=8, num_stages=5),
]
_FMA_PLANS = [  # up to 4 rows; 128-row tiles only for one row (two or more spill registers)
    fma_plan(64, 128, num_warps=8, num_stages=2),
    fma_plan(64, 128, num_stages=2),
    fma_plan(32, 128, split_k=4, num_stages=2),
    fma_plan(64, 128, split_k=4, num_stages=2),
]
_GEMM_64 = [dot_plan(128, 64, block_m=64, num_stages=4), dot_plan(64, 64, block_m=64, split_k=2, num_stages=4)]
_GEMM_128 = [
    dot_plan(128, 64, block_m=128, num_warps=8, num_stages=3),
    dot_plan(256, 64, block_m=128, num_warps=8, num_stages=3),
]
INT4_CANDIDATES: dict[int, list[Plan]] = {
    1: [*_DOT_PLANS, *_FMA_PLANS, fma_plan(128, 128, num_stages=2)],
    2: [*_DOT_PLANS, *_FMA_PLANS],
    4: [*_DOT_PLANS, *_FMA_PLANS],
    8: _DOT_PLANS,
    16: _DOT_PLANS,
    32: [dot_plan(128, 64, block_m=32), dot_plan(64, 64, block_m=32, split_k=2), *_GEMM_64, DEQUANTIZE_CUBLAS],
    64: [*_GEMM_64, *_GEMM_128, DEQUANTIZE_CUBLAS],
    128: [*_GEMM_64, *_GEMM_128, DEQUANTIZE_CUBLAS],
    256: [*_GEMM_128, *_GEMM_64, DEQUANTIZE_CUBLAS],
    _LARGEST_BUCKET: [DEQUANTIZE_CUBLAS, *_GEMM_128],
}


def supports(
    x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, bias: Tensor | None
) -> bool:
    """Whether `int4_linear` runs this GEMM: a half-precision x [..., K] of at least one row; the packed weight
    [N, K / 2] uint8 with K % 8 == 0 and rows of whole int32 words; a group size with a power-of-two factor of
    at least MIN_BLOCK_K; scales (and zeros) [N, ceil(K / group_size)]; on a GPU (or Triton's interpreter)."""
    if x.dtype not in HALF_DTYPES or weight.dtype != torch.uint8 or weight.dim() != 2 or x.dim() == 0:
        return False
    n, k = weight.shape[0], weight.shape[1] * 2
    if n == 0 or k % 8 or x.shape[-1] != k or x.numel() == 0 or (group_size & -group_size) < MIN_BLOCK_K:
        return False
    if weight.stride(1) != 1 or weight.stride(0) % 4 or weight.storage_offset() % 4:
        return False  # not viewable as int32 words
    groups = (n, -(-k // group_size))
    if tuple(scales.shape) != groups or (zeros is not None and tuple(zeros.shape) != groups):
        return False
    if bias is not None and (bias.dtype != x.dtype or tuple(bias.shape) != (n,)):
        return False
    return x.device.type == "cuda" or INTERPRETED


def fit(plan: Plan, group_size: int) -> Plan:
    """`plan` with BLOCK_K cut to the largest power of two dividing the group size, if larger (a tile lies in
    one group)."""
    block_k = min(plan.block_k, group_size & -group_size)
    return dataclasses.replace(plan, block_k=block_k) if block_k != plan.block_k else plan


def candidates(rows: int, group_size: int) -> list[Plan]:
    """The plans for `rows` rows (`INT4_CANDIDATES`), fitted to the group size, without repeats."""
    bucket = min(gemv.row_bucket(rows), _LARGEST_BUCKET)
    return list(dict.fromkeys(fit(plan, group_size) for plan in INT4_CANDIDATES[bucket]))


@triton.jit
def _dequantize_kernel(
    w_ptr, scale_ptr, zero_ptr, out_ptr, N, K, stride_wn, stride_scale,
    HAS_ZEROS: tl.constexpr, GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    # (q - z) * s in fp32, rounded to the output dtype: the reference's dequantized weight.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    k = tl.program_id(1) * BLOCK_K
    rows = tl.minimum(offs_n, N - 1).to(tl.int64)
    w_ptrs = w_ptr + rows[:, None] * stride_wn + (k // 8 + tl.arange(0, BLOCK_K // 8))[None, :]
    w, scale, zero = w_tile(
        w_ptrs, k, K, rows, scale_ptr, zero_ptr, stride_scale, True, "evict_first", BLOCK_K, True, HAS_ZEROS, GROUP_SIZE
    )
    offs_k = k + tl.arange(0, BLOCK_K)
    out = (int4_codes(w, zero) * scale[:, None]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + rows[:, None] * K + offs_k[None, :], out, mask=(offs_n < N)[:, None] & (offs_k < K)[None, :])


INTERPRETED: bool = is_interpreted(_dequantize_kernel)


def dequantize(words: Tensor, int4: Int4Weights, dtype: torch.dtype) -> Tensor:
    """The weight [N, K] in `dtype` from its int32 words [N, K / 8] (what the reference multiplies by)."""
    n, k = words.shape[0], words.shape[1] * 8
    out = torch.empty((n, k), dtype=dtype, device=words.device)
    block_n, block_k = 32, min(128, int4.group_size & -int4.group_size)
    zeros = int4.zeros if int4.zeros is not None else int4.scales  # unread without HAS_ZEROS
    _dequantize_kernel[(triton.cdiv(n, block_n), triton.cdiv(k, block_k))](
        words, int4.scales, zeros, out, n, k, words.stride(0), int4.scales.stride(0),
        HAS_ZEROS=int4.zeros is not None, GROUP_SIZE=int4.group_size, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out


def _run(x2: Tensor, words: Tensor, int4: Int4Weights, bias: Tensor | None, y2: Tensor, plan: Plan) -> None:
    if plan.path == "cublas":  # DEQUANTIZE_CUBLAS
        gemv._launch(x2, dequantize(words, int4, x2.dtype), bias, y2, CUBLAS)
    else:
        gemv._launch(x2, words, bias, y2, plan, int4)


def int4_linear(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None = None,
    plan: Plan | None = None,
) -> Tensor:
    """`ops.quant.int4_linear` on the GPU (`supports` must hold): x [..., K] @ dequantized weight^T + bias, in
    x's dtype. The plan is tuned per (M bucket, N, K, dtype, group size, zero points, device) on first use
    (kernels/tuning.py); `plan` forces one (fitted to the group size)."""
    x2, y, y2 = gemv._rows_and_output(x, weight)
    words = weight.view(torch.int32)
    int4 = Int4Weights(scales.contiguous(), zeros.contiguous() if zeros is not None else None, group_size)
    run = lambda plan: _run(x2, words, int4, bias, y2, plan)
    if plan is None:
        key = (gemv.row_bucket(x2.shape[0]), words.shape[0], x2.shape[1], x2.dtype, "int4", group_size)
        plan = tuning.cached_plan(key + (zeros is not None, x2.device), candidates(x2.shape[0], group_size), run)
    run(fit(plan, group_size))
    return y
