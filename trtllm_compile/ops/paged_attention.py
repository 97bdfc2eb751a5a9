"""Attention over a paged KV cache, for a step that mixes prefills and decodes of many sequences.

Tokens of all sequences in a step are flattened into one row ([1, H, T, D], sequence n owning tokens
`query_start_loc[n]:query_start_loc[n+1]`). The op first writes the step's keys/values into the cache at
`slot_mapping` (slot = block * block_size + offset), then lets each sequence's queries attend to its first
`context_lens[n]` cached positions, causally: the queries are the last positions of their sequence.
"""

from __future__ import annotations

import torch
from torch import Tensor

from trtllm_compile.ops.attention import visibility_mask


def write_kv_cache(kv_cache: Tensor, layer: int, k: Tensor, v: Tensor, slot_mapping: Tensor) -> None:
    """kv_cache: [layers, 2, num_blocks, block_size, Hkv, D]; k/v: [1, Hkv, T, D]."""
    for which, new in ((0, k), (1, v)):
        flat = kv_cache[layer, which].view(-1, *kv_cache.shape[-2:])
        flat.index_copy_(0, slot_mapping, new[0].transpose(0, 1).to(flat.dtype))


def gather_sequence_kv(kv_cache: Tensor, layer: int, block_table: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The first `length` cached keys and values of one sequence, as [1, Hkv, length, D]."""
    block_size = kv_cache.shape[3]
    blocks = block_table[: (length + block_size - 1) // block_size].long()
    k = kv_cache[layer, 0, blocks].flatten(0, 1)[:length]
    v = kv_cache[layer, 1, blocks].flatten(0, 1)[:length]
    return k.transpose(0, 1)[None], v.transpose(0, 1)[None]


@torch.library.custom_op("trtllm::paged_attention", mutates_args=("kv_cache",))
def paged_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    kv_cache: Tensor,
    slot_mapping: Tensor,
    block_tables: Tensor,
    context_lens: Tensor,
    host_query_start_loc: Tensor,
    layer: int,
    scale: float,
    sliding_window: int = -1,
    softcap: float = 0.0,
) -> Tensor:
    """q: [1, Hq, T, D], k/v: [1, Hkv, T, D] -> [1, Hq, T, D]; `host_query_start_loc` is a CPU tensor."""
    write_kv_cache(kv_cache, layer, k, v, slot_mapping)
    out = torch.empty_like(q)
    starts = host_query_start_loc.tolist()
    for n, (start, end) in enumerate(zip(starts[:-1], starts[1:], strict=True)):
        length = int(context_lens[n])
        keys, values = gather_sequence_kv(kv_cache, layer, block_tables[n], length)
        out[:, :, start:end] = _attend(
            q[:, :, start:end], keys.to(q.dtype), values.to(q.dtype), scale, sliding_window, softcap
        )
    return out


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float, sliding_window: int, softcap: float) -> Tensor:
    q_len, kv_len = q.shape[-2], k.shape[-2]
    # Queries are the last q_len positions: causal and window masks align to the end of the keys.
    allowed = visibility_mask(kv_len, kv_len, True, sliding_window, q.device)[kv_len - q_len :]
    return torch.ops.trtllm.attention(q, k, v, allowed, scale, False, -1, softcap)


@paged_attention.register_fake
def _(
    q,
    k,
    v,
    kv_cache,
    slot_mapping,
    block_tables,
    context_lens,
    host_query_start_loc,
    layer,
    scale,
    sliding_window=-1,
    softcap=0.0,
):
    return torch.empty_like(q)
