"""The one-launch KV-cache write against the op's index_copy reference: exact, for strided K/V views, GQA head
counts, FP8 bytes copied or quantized on the way, and slots anywhere in the pool (the spare block included)."""

from __future__ import annotations

import pytest
import torch

from trtllm_compile.ops.paged_attention import load_kv, store_kv
from trtllm_compile.ops.paged_attention import write_kv_cache as reference_write

DTYPES = [torch.float32, torch.bfloat16, torch.float8_e4m3fn]


def _case(num_tokens, kv_heads, head_dim, dtype, device, layers=2, block_size=4):
    """A filled cache with room to spare, and K/V as the graph hands them over: K contiguous [1, Hkv, T, D]
    (RoPE's output), V a transposed view of the fused QKV projection's [1, T, Hkv, D] rows."""
    gen = torch.Generator().manual_seed(num_tokens)
    num_blocks = num_tokens // block_size + 9
    shape = (layers, 2, num_blocks, block_size, kv_heads, head_dim)
    cache = torch.randn(shape, generator=gen).to(dtype)
    k = torch.randn(1, kv_heads, num_tokens, head_dim, generator=gen).to(dtype)
    qkv = torch.randn(1, num_tokens, 3 * kv_heads, head_dim, generator=gen).to(dtype)
    v = qkv[:, :, 2 * kv_heads :].transpose(1, 2)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    return [t.to(device) for t in (cache, k, v, slots)]


def _check(kernels, num_tokens, kv_heads, head_dim, dtype, device):
    cache, k, v, slots = _case(num_tokens, kv_heads, head_dim, dtype, device)
    expected = cache.cpu().clone()
    reference_write(expected, 1, k.cpu(), v.cpu(), slots.cpu())
    kernels.write_kv_cache(cache, 1, k, v, slots)
    assert torch.equal(cache.cpu().view(torch.uint8), expected.view(torch.uint8))  # bit-exact, FP8 included


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,kv_heads,head_dim", [(5, 2, 16), (1, 3, 8), (0, 2, 16)], ids=str)
def test_write_kv_cache_interpreted(interpreted, dtype, num_tokens, kv_heads, head_dim):
    _check(interpreted("kv_cache"), num_tokens, kv_heads, head_dim, dtype, "cpu")


def test_write_kv_cache_rejects_values_not_in_the_cache_dtype(interpreted):
    kernels = interpreted("kv_cache")
    cache, k, v, slots = _case(3, 2, 16, torch.bfloat16, "cpu")
    with pytest.raises(ValueError, match="k_scale and v_scale"):
        kernels.write_kv_cache(cache, 0, k.float(), v, slots)
    with pytest.raises(ValueError, match="read_back dequantizes what an FP8 write stored"):
        kernels.write_kv_cache(cache, 0, k, v, slots, read_back=(torch.empty(3, 2, 16), torch.empty(3, 2, 16)))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,kv_heads,head_dim", [(1, 32, 128), (300, 8, 128), (77, 1, 64)], ids=str)
def test_write_kv_cache_gpu(dtype, num_tokens, kv_heads, head_dim):
    from trtllm_compile.kernels import kv_cache

    _check(kv_cache, num_tokens, kv_heads, head_dim, dtype, "cuda")


def _check_quantized(kernels, k_scale, v_scale, device, representable: bool):
    """bf16 K/V into an FP8 cache with calibrated scales. `representable`: K/V are E4M3 values times a power-of-two
    scale, so every quantized value is exact (Triton's interpreter rounds fp32 -> E4M3 casts with an exponent
    carry wrongly; the GPU test takes any values)."""
    cache, k, v, slots = _case(6, 2, 16, torch.bfloat16, device)
    cache = cache.to(torch.float8_e4m3fn)
    if representable:
        k = (k.float().to(torch.float8_e4m3fn).float() * k_scale).to(torch.bfloat16)
        v = (v.float().to(torch.float8_e4m3fn).float() * v_scale).to(torch.bfloat16)
    scales = [torch.tensor(s, device=device) for s in (k_scale, v_scale)]
    expected = cache.cpu().clone()
    reference_write(expected, 0, k.cpu(), v.cpu(), slots.cpu(), *(s.cpu() for s in scales))
    read_back = [torch.full((6, 2, 16), float("nan"), dtype=torch.bfloat16, device=device) for _ in range(2)]
    kernels.write_kv_cache(cache, 0, k, v, slots, *scales, read_back=read_back)
    assert torch.equal(cache.cpu().view(torch.uint8), expected.view(torch.uint8))
    # what a prefill attends to: the stored values dequantized as the reference reads them (fp8_qdq)
    for back, x, scale in zip(read_back, (k, v), scales, strict=True):
        stored = store_kv(x.cpu(), scale.cpu(), torch.float8_e4m3fn)
        assert torch.equal(back.cpu(), load_kv(stored, scale.cpu(), torch.bfloat16)[0].transpose(0, 1))


def test_write_kv_cache_quantizes_into_an_fp8_cache_interpreted(interpreted):
    _check_quantized(interpreted("kv_cache"), 0.5, 0.125, "cpu", representable=True)


@pytest.mark.gpu
def test_write_kv_cache_quantizes_into_an_fp8_cache_gpu():
    from trtllm_compile.kernels import kv_cache

    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("E4M3 conversions need compute capability 8.9 or newer")
    _check_quantized(kv_cache, 0.0123, 0.0371, "cuda", representable=False)
