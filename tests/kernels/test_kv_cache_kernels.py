"""The one-launch KV-cache write against the op's index_copy reference: exact, for strided K/V views, GQA head
counts, FP8 bytes, and slots anywhere in the pool (the spare block included)."""

from __future__ import annotations

import pytest
import torch

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
    with pytest.raises(ValueError, match="cache's dtype"):
        kernels.write_kv_cache(cache, 0, k.float(), v, slots)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_tokens,kv_heads,head_dim", [(1, 32, 128), (300, 8, 128), (77, 1, 64)], ids=str)
def test_write_kv_cache_gpu(dtype, num_tokens, kv_heads, head_dim):
    from trtllm_compile.kernels import kv_cache

    _check(kv_cache, num_tokens, kv_heads, head_dim, dtype, "cuda")
