"""Quantized GEMMs and the FP8 quantize-dequantize of the KV cache.

Every op carries what a converter needs as plain arguments: the quantized weight, its scales as tensors, the
static activation scale (None: dynamic per-token), and the INT4 group size. Scales are float32; a scale of
shape [] is per tensor, [N] per output channel, [N, K / group] per group.

The bodies are the references (CPU, and what the fast paths are tested against): they dequantize and multiply,
emulating activation quantization exactly (`.to(torch.float8_e4m3fn)` rounding, int8 round-half-even), and
accumulate the W8A8 GEMMs in float32 as the kernels do. On CUDA the fast paths are torch's own GEMMs,
`torch._scaled_mm` (FP8) and `torch._int_mm` (INT8), the Triton GEMV for decode-sized FP8 GEMMs with a static
activation scale (`kernels.gemv.fp8_gemv`), and Triton kernels for INT4 at any row count (`kernels.int4_gemv`),
which also runs a gated MLP's INT4 gate/up GEMM and its activation in one kernel at one row (`int4_gated_linear`).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from trtllm_compile.kernels import TRITON_AVAILABLE, cuda_kernel
from trtllm_compile.ops.library import custom_op
from trtllm_compile.ops.mlp import mlp_activation_reference

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448
INT8_MAX = 127.0
_MIN_SCALE = 1e-12  # all-zero rows get this scale instead of dividing by zero

# Opt-in memo of dequantized weights for the CPU references (see `dequantized_weight_cache`): id -> entry.
_dequantized: dict[int, tuple] | None = None


@contextlib.contextmanager
def dequantized_weight_cache() -> Iterator[None]:
    """Within the block, the references dequantize each weight once and reuse it (keyed by the weight
    tensor's identity and version). An evaluation loop then runs a quantized model on CPU about as fast as
    the float one, holding one float copy of the quantized weights meanwhile; the numerics do not change."""
    global _dequantized
    outer, _dequantized = _dequantized, {} if _dequantized is None else _dequantized
    try:
        yield
    finally:
        _dequantized = outer


def _memo(weight: Tensor, dequantize, *scales: Tensor | None) -> Tensor:
    if _dequantized is None:
        return dequantize()
    version = (weight._version, *(id(t) for t in scales))
    entry = _dequantized.get(id(weight))
    if entry is None or entry[0]() is not weight or entry[1] != version:
        entry = (weakref.ref(weight), version, dequantize())
        _dequantized[id(weight)] = entry
    return entry[2]


def per_token_scale(x: Tensor, qmax: float) -> Tensor:
    """Dynamic activation scale: one float32 per row of `x`, shape [..., 1]."""
    return (x.abs().amax(-1, keepdim=True).float() / qmax).clamp(min=_MIN_SCALE)


def fp8_quantize(x: Tensor, scale: Tensor) -> Tensor:
    """x times 1 / scale, saturated to +-448 and rounded to E4M3 (clamped first: casts of overflow give 448 or
    NaN, depending on the torch version and device). One reciprocal per scale, as quantizing kernels do: the
    decode GEMV quantizes x in every program, and a division per element cost it more than its multiply-adds."""
    return (x.float() * scale.float().reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def int8_quantize(x: Tensor, scale: Tensor) -> Tensor:
    """x / scale rounded half-to-even and clamped to the symmetric range [-127, 127]."""
    return (x.float() / scale).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)


def unpack_int4(packed: Tensor) -> Tensor:
    """[N, K / 2] uint8 (element 2i in the low nibble, 2i + 1 in the high one) -> [N, K] uint8 in [0, 15]."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def pack_int4(q: Tensor) -> Tensor:
    """Inverse of `unpack_int4`: [N, K] integers in [0, 15] -> [N, K / 2] uint8."""
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def dequantize_codes(codes: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    """float32 [N, K]: (code - zero) * scale per group of `group_size` inputs (the last group may be shorter);
    no zeros means the symmetric zero point 8."""
    rows, cols = codes.shape
    groups = codes.float()
    if cols % group_size:
        groups = F.pad(groups, (0, -cols % group_size))
    groups = groups.view(rows, -1, group_size)
    groups = groups.sub_(zeros.float()[..., None]) if zeros is not None else groups.sub_(8.0)
    return groups.mul_(scales.float()[..., None]).view(rows, -1)[:, :cols]


def dequantize_int4(packed: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> Tensor:
    return dequantize_codes(unpack_int4(packed), scales, zeros, group_size)


def _finish(out: Tensor, dtype: torch.dtype, bias: Tensor | None) -> Tensor:
    out = out.to(dtype)
    return out + bias if bias is not None else out


def _scaled_gemm(x_q: Tensor, x_scale: Tensor, weight: Tensor, weight_scale: Tensor, dtype, bias) -> Tensor:
    # As the kernels do: accumulate the products of the quantized values in float32, then scale by x_scale per
    # row (or tensor) and weight_scale per column (or tensor), cast, add the bias.
    accumulated = x_q.float() @ _memo(weight, weight.float).T
    return _finish(accumulated * x_scale.float() * weight_scale.float(), dtype, bias)


def fp8_linear_reference(
    x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Tensor | None, bias: Tensor | None
) -> Tensor:
    scale = input_scale if input_scale is not None else per_token_scale(x, FP8_MAX)
    return _scaled_gemm(fp8_quantize(x, scale), scale, weight, weight_scale, x.dtype, bias)


def int8_linear_reference(
    x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Tensor | None, bias: Tensor | None
) -> Tensor:
    scale = input_scale if input_scale is not None else per_token_scale(x, INT8_MAX)
    return _scaled_gemm(int8_quantize(x, scale), scale, weight, weight_scale, x.dtype, bias)


def int4_linear_reference(
    x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, bias: Tensor | None
) -> Tensor:
    # Weight-only: the kernel dequantizes into the activation dtype and runs a plain GEMM in it.
    dequantized = _memo(weight, lambda: dequantize_int4(weight, scales, zeros, group_size), scales, zeros)
    return F.linear(x, dequantized.to(x.dtype), bias)


def int4_gated_linear_reference(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None,
    activation: str,
) -> Tensor:
    y = int4_linear_reference(x, weight, scales, zeros, group_size, bias)
    half = y.shape[-1] // 2
    return mlp_activation_reference(y[..., :half], y[..., half:], activation)


@custom_op("trtllm::fp8_linear", mutates_args=())
def fp8_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Tensor | None, bias: Tensor | None
) -> Tensor:
    """FP8 E4M3 W8A8: `weight` [N, K] float8_e4m3fn, `weight_scale` [] or [N], `input_scale` [] (static) or
    None (dynamic per-token), `bias` [N] or None -> [..., N] in x's dtype."""
    return fp8_linear_reference(x, weight, weight_scale, input_scale, bias)


@custom_op("trtllm::int8_linear", mutates_args=())
def int8_linear(
    x: Tensor, weight: Tensor, weight_scale: Tensor, input_scale: Tensor | None, bias: Tensor | None
) -> Tensor:
    """INT8 W8A8 (SmoothQuant): `weight` [N, K] int8, `weight_scale` [N], `input_scale` [] (static) or None
    (dynamic per-token), `bias` [N] or None -> [..., N] in x's dtype."""
    return int8_linear_reference(x, weight, weight_scale, input_scale, bias)


@custom_op("trtllm::int4_linear", mutates_args=())
def int4_linear(
    x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, bias: Tensor | None
) -> Tensor:
    """INT4 weight-only: `weight` [N, K / 2] uint8 (two nibbles per byte, see `unpack_int4`), `scales` and
    `zeros` (integer-valued zero points, or None for the symmetric zero point 8) [N, ceil(K / group_size)]."""
    return int4_linear_reference(x, weight, scales, zeros, group_size, bias)


@custom_op("trtllm::int4_gated_linear", mutates_args=())
def int4_gated_linear(
    x: Tensor,
    weight: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    group_size: int,
    bias: Tensor | None,
    activation: str,
) -> Tensor:
    """A gated MLP's INT4 gate/up GEMM and its activation: `mlp_activation(y[..., :I], y[..., I:], activation)` of
    y = `int4_linear(x, weight, ...)` [..., 2I], the weight being [gate; up] (passes/fuse_int4_gated_mlp.py)."""
    return int4_gated_linear_reference(x, weight, scales, zeros, group_size, bias, activation)


@int4_gated_linear.register_fake
def _(x: Tensor, weight: Tensor, *args) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0] // 2)


@custom_op("trtllm::fp8_qdq", mutates_args=())
def fp8_qdq(x: Tensor, scale: Tensor) -> Tensor:
    """Quantize to FP8 E4M3 with a per-tensor `scale` [] and back: what an FP8 KV cache stores and returns."""
    return (fp8_quantize(x, scale).float() * scale.float()).to(x.dtype)


def _linear_fake(x: Tensor, weight: Tensor, *args) -> Tensor:
    return x.new_empty(*x.shape[:-1], weight.shape[0])


for _op in (fp8_linear, int8_linear, int4_linear):
    _op.register_fake(_linear_fake)


@fp8_qdq.register_fake
def _(x: Tensor, scale: Tensor) -> Tensor:
    return torch.empty_like(x)


# ---------------------------------------------------------------------------------------------------------------
# CUDA fast paths. Each falls back to the reference where torch's kernel does not apply (shape, dtype, GPU).


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _padded_rows(x2: Tensor, multiple: int, minimum: int = 0) -> Tensor:
    rows = max(minimum, _round_up(x2.shape[0], multiple))
    return F.pad(x2, (0, 0, 0, rows - x2.shape[0])) if rows != x2.shape[0] else x2


def _fp8_rows(rows: Tensor, input_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """rows [M, K] in E4M3 padded with zero rows to a multiple of 16 (cuBLASLt's FP8 shapes), and their scale."""
    padded_rows = _round_up(rows.shape[0], 16)
    if input_scale is not None and TRITON_AVAILABLE:
        from trtllm_compile.kernels import quantize

        if quantize.supports(rows, input_scale):  # one launch, padding included
            return quantize.fp8_quantize_rows(rows, input_scale, padded_rows), input_scale.float()
    padded = _padded_rows(rows, 16)
    scale = input_scale.float() if input_scale is not None else per_token_scale(padded, FP8_MAX)
    return fp8_quantize(padded, scale), scale


@cuda_kernel("trtllm::fp8_linear")
def _fp8_linear_cuda(x, weight, weight_scale, input_scale, bias):
    if torch.cuda.get_device_capability(x.device) < (8, 9):  # no E4M3 conversions or FP8 GEMMs before Ada
        return fp8_linear_reference(x, weight, weight_scale, input_scale, bias)
    if TRITON_AVAILABLE:  # decode rows: one GEMV kernel that quantizes x itself, instead of quantize + cuBLASLt
        from trtllm_compile.kernels import gemv

        if gemv.supports_fp8(x, weight, weight_scale, input_scale, bias):
            return gemv.fp8_gemv(x, weight, weight_scale, input_scale, bias)
    n, k = weight.shape
    if k % 16 or n % 16:
        return fp8_linear_reference(x, weight, weight_scale, input_scale, bias)
    rows = x.reshape(-1, k)
    x_fp8, scale_a = _fp8_rows(rows, input_scale)
    if scale_a.numel() == 1 and weight_scale.numel() == 1:  # tensor-wise scaling
        out = torch._scaled_mm(x_fp8, weight.t(), scale_a, weight_scale.float(), out_dtype=torch.bfloat16)
    else:  # row-wise scaling: both scales float32, [M, 1] and [1, N]; output must be bf16
        scale_a = scale_a.reshape(-1, 1).expand(x_fp8.shape[0], 1).contiguous()
        scale_b = weight_scale.float().reshape(1, -1).expand(1, n).contiguous()
        out = torch._scaled_mm(x_fp8, weight.t(), scale_a, scale_b, out_dtype=torch.bfloat16)
    return _finish(out[: rows.shape[0]], x.dtype, bias).reshape(*x.shape[:-1], n)


@cuda_kernel("trtllm::int8_linear")
def _int8_linear_cuda(x, weight, weight_scale, input_scale, bias):
    n, k = weight.shape
    if k % 8 or n % 8:
        return int8_linear_reference(x, weight, weight_scale, input_scale, bias)
    rows = x.reshape(-1, k)
    padded = _padded_rows(rows, 8, minimum=32)  # torch._int_mm needs M > 16 and multiples of 8
    scale_a = input_scale.float() if input_scale is not None else per_token_scale(padded, INT8_MAX)
    acc = torch._int_mm(int8_quantize(padded, scale_a), weight.t())[: rows.shape[0]]
    scale_a = scale_a if scale_a.numel() == 1 else scale_a[: rows.shape[0]]
    out = acc.float() * scale_a * weight_scale.float()
    return _finish(out, x.dtype, bias).reshape(*x.shape[:-1], n)


_TINYGEMM_INNER_K_TILES = 8
_tinygemm_cache: dict[int, tuple] = {}


def tinygemm_weight(weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int) -> tuple[Tensor, Tensor]:
    """(int4pack weight, [K / g, N, 2] bf16 scales-and-zeros) for `_weight_int4pack_mm`, converted once.

    tinygemm dequantizes (q - 8) * scale + zero, so our zero point z becomes (8 - z) * scale. The cache is keyed
    by the packed weight's identity and version, and forgets a weight when it is freed.
    """
    key = id(weight)
    entry = _tinygemm_cache.get(key)
    if entry is not None and entry[0]() is weight and entry[1] == (weight._version, id(scales), id(zeros)):
        return entry[2]
    q = unpack_int4(weight).to(torch.int32)
    packed = ((q[:, 0::2] << 4) | q[:, 1::2]).to(torch.uint8).contiguous()  # tinygemm: element 2i is high
    packed = torch.ops.aten._convert_weight_to_int4pack(packed, _TINYGEMM_INNER_K_TILES)
    offset = (8 - zeros.float()) * scales.float() if zeros is not None else torch.zeros_like(scales.float())
    scales_and_zeros = torch.stack([scales.float(), offset], dim=-1).transpose(0, 1).contiguous()
    converted = (packed, scales_and_zeros.to(torch.bfloat16))
    ref = weakref.ref(weight, lambda _, key=key: _tinygemm_cache.pop(key, None))
    _tinygemm_cache[key] = (ref, (weight._version, id(scales), id(zeros)), converted)
    return converted


def int4_linear_tinygemm(
    x: Tensor, weight: Tensor, scales: Tensor, zeros: Tensor | None, group_size: int, bias: Tensor | None
) -> Tensor:
    """`int4_linear` on torch's tinygemm kernel (`_weight_int4pack_mm`): bf16 x, K % 128 == 0, N % 8 == 0, groups
    of 32 to 256, from a repacked copy of the weight (`tinygemm_weight`). Off the op's CUDA path (see
    kernels/int4_gemv.py); kept as the comparison of benchmarks/quant_decode.py."""
    n, k = weight.shape[0], weight.shape[1] * 2
    usable = x.dtype == torch.bfloat16 and k % (_TINYGEMM_INNER_K_TILES * 16) == 0 and n % 8 == 0
    if not usable or group_size not in (32, 64, 128, 256):
        raise ValueError(
            f"tinygemm takes bf16 x, K % 128 == 0, N % 8 == 0, group 32..256; not {x.dtype} {n}x{k} g{group_size}"
        )
    packed, scales_and_zeros = tinygemm_weight(weight, scales, zeros, group_size)
    out = torch.ops.aten._weight_int4pack_mm(x.reshape(-1, k), packed, group_size, scales_and_zeros)
    return _finish(out, x.dtype, bias).reshape(*x.shape[:-1], n)


@cuda_kernel("trtllm::int4_linear")
def _int4_linear_cuda(x, weight, scales, zeros, group_size, bias):
    if TRITON_AVAILABLE:
        from trtllm_compile.kernels import int4_gemv

        if int4_gemv.supports(x, weight, scales, zeros, group_size, bias):
            return int4_gemv.int4_linear(x, weight, scales, zeros, group_size, bias)
    return int4_linear_reference(x, weight, scales, zeros, group_size, bias)


@cuda_kernel("trtllm::int4_gated_linear")
def _int4_gated_linear_cuda(x, weight, scales, zeros, group_size, bias, activation):
    # One row (a decode step of one sequence): one kernel. Else the GEMM and the activation kernel, as unfused.
    if TRITON_AVAILABLE:
        from trtllm_compile.kernels import activation as activation_kernels
        from trtllm_compile.kernels import int4_gemv

        if int4_gemv.supports_gated(x, weight, scales, zeros, group_size, bias, activation):
            return int4_gemv.int4_gated_linear(x, weight, scales, zeros, group_size, bias, activation)
        y = _int4_linear_cuda(x, weight, scales, zeros, group_size, bias)
        half = y.shape[-1] // 2
        return activation_kernels.mlp_activation(y[..., :half], y[..., half:], activation)
    return int4_gated_linear_reference(x, weight, scales, zeros, group_size, bias, activation)


# The quantized GEMMs: each takes the activation as its first argument, like aten.linear.
QUANTIZED_LINEARS = (
    torch.ops.trtllm.fp8_linear.default,
    torch.ops.trtllm.int8_linear.default,
    torch.ops.trtllm.int4_linear.default,
)
