"""Give a cache-less causal-LM graph an explicit, fixed-capacity KV cache, for the TensorRT step engines.

The graph comes from a model exported without a cache (input_ids, position_ids -> logits) whose attentions are
`trtllm.attention(q, k, v, None, scale, is_causal=True, ...)`. The rewrite adds a `cache_lengths` [B] int32 input
(tokens each sequence already holds) and, per attention layer i, `k_cache_i`/`v_cache_i` [B, Hkv, capacity, D]
inputs whose updated values become extra outputs. Each attention becomes an attention over [past ; new]:

    k_cache_i' = cache_update(k_cache_i, k, cache_lengths)            (new keys written after the past ones)
    out = cached_attention(q, k_cache_i', v_cache_i', cache_lengths + S)  (causal, bottom-right per sequence)

The same rewrite serves prefill (S new tokens on an empty cache, or a chunk after cached ones) and decode (S = 1).
TensorRT's KV-cache layer updates the cache in place, so the runtime binds one buffer to a cache input and its
output. The two ops below are the graph-level contract; their bodies are the reference the converters follow.
A CACHE-stage pass that does nothing unless `config.kv_cache_max_seq_len` is set: the torch.compile backend path
never asks for it.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import Tensor
from torch._guards import detect_fake_mode

from trtllm_compile.fx_utils import is_op, val
from trtllm_compile.ops.attention import attention as _reference_attention
from trtllm_compile.passes.registry import Stage, register_pass


@torch.library.custom_op("trtllm_kv::cache_update", mutates_args=())
def cache_update(cache: Tensor, update: Tensor, write_indices: Tensor) -> Tensor:
    """`cache` [B, H, Smax, D] with `update` [B, H, S, D] written at `write_indices[b]` of each sequence b."""
    out = cache.clone()
    for b in range(cache.shape[0]):
        start = int(write_indices[b])
        out[b, :, start : start + update.shape[2]] = update[b]
    return out


@cache_update.register_fake
def _(cache, update, write_indices):
    return torch.empty_like(cache)


@torch.library.custom_op("trtllm_kv::cached_attention", mutates_args=())
def cached_attention(
    q: Tensor,
    k_cache: Tensor,
    v_cache: Tensor,
    kv_lengths: Tensor,
    scale: float,
    sliding_window: int = -1,
    softcap: float = 0.0,
) -> Tensor:
    """Causal attention of q [B, Hq, S, D] over the first `kv_lengths[b]` cached keys of each sequence b; the
    queries are the last S of those positions (bottom-right aligned), and a window (> 0) keeps the keys less than
    `sliding_window` positions behind each query."""
    outs = []
    for b in range(q.shape[0]):
        n = int(kv_lengths[b])
        q_pos = torch.arange(n - q.shape[2], n, device=q.device)[:, None]
        k_pos = torch.arange(n, device=q.device)[None, :]
        visible = k_pos <= q_pos
        if sliding_window > 0:
            visible &= q_pos - k_pos < sliding_window
        k, v = k_cache[b : b + 1, :, :n], v_cache[b : b + 1, :, :n]
        outs.append(_reference_attention(q[b : b + 1], k, v, visible, scale, False, -1, softcap))
    return torch.cat(outs)


@cached_attention.register_fake
def _(q, k_cache, v_cache, kv_lengths, scale, sliding_window=-1, softcap=0.0):
    return torch.empty_like(q)


def _add_input(gm: torch.fx.GraphModule, name: str, fake: Tensor) -> torch.fx.Node:
    last = [n for n in gm.graph.nodes if n.op == "placeholder"][-1]
    with gm.graph.inserting_after(last):
        node = gm.graph.placeholder(name)
    node.meta["val"] = fake
    return node


def _size(gm: torch.fx.GraphModule, before: torch.fx.Node, tensor: torch.fx.Node, dim: int):
    """An int where the size is static, else a `sym_size` node (the graph must not hold bare SymInts)."""
    size = val(tensor).shape[dim]
    if isinstance(size, int):
        return size
    return _call(gm, before, torch.ops.aten.sym_size.int, (tensor, dim), size)


def _call(gm: torch.fx.GraphModule, before: torch.fx.Node, target, args: tuple, fake) -> torch.fx.Node:
    with gm.graph.inserting_before(before):
        node = gm.graph.call_function(target, args)
    node.meta["val"] = fake
    return node


def _attention_args(node: torch.fx.Node) -> dict:
    names = ("q", "k", "v", "attn_mask", "scale", "is_causal", "sliding_window", "softcap")
    defaults = {"is_causal": False, "sliding_window": -1, "softcap": 0.0}
    return defaults | dict(zip(names, node.args, strict=False)) | node.kwargs


@register_pass(Stage.CACHE)
def insert_kv_cache_tensorrt(gm: torch.fx.GraphModule, config) -> int:
    """Causal trtllm.attention -> attention over a fixed-capacity KV cache (graph inputs/outputs, for TensorRT)."""
    capacity = getattr(config, "kv_cache_max_seq_len", None)
    if capacity is None:
        return 0
    attentions = [n for n in gm.graph.nodes if is_op(n, torch.ops.trtllm.attention.default)]
    if not attentions:
        return 0
    for node in attentions:
        if _attention_args(node)["attn_mask"] is not None or not _attention_args(node)["is_causal"]:
            raise ValueError(f"{node.name}: the KV-cache rewrite needs causal attention without a mask")
    fake_mode = detect_fake_mode([val(n) for n in gm.graph.nodes if n.op == "placeholder"])
    first = attentions[0]
    batch = val(first.args[0]).shape[0]
    with fake_mode:
        lengths_fake = torch.empty(batch, dtype=torch.int32)
    cache_lengths = _add_input(gm, "cache_lengths", lengths_fake)
    new_tokens = _size(gm, first, first.args[0], 2)
    kv_lengths = _call(gm, first, torch.ops.aten.add.Tensor, (cache_lengths, new_tokens), lengths_fake)
    presents = []
    for i, node in enumerate(attentions):
        args = _attention_args(node)
        caches = []
        for kind in ("k", "v"):
            new = val(args[kind])
            with fake_mode:
                fake = torch.empty(batch, new.shape[1], capacity, new.shape[3], dtype=new.dtype)
            cache = _add_input(gm, f"{kind}_cache_{i}", fake)
            cache.meta["kv_cache"] = True  # an in-place buffer: the runtime binds it as input and output
            update = (cache, args[kind], cache_lengths)
            caches.append(_call(gm, node, torch.ops.trtllm_kv.cache_update.default, update, fake))
        presents += caches
        attention_args = (args["q"], *caches, kv_lengths, args["scale"], args["sliding_window"], args["softcap"])
        attention = _call(gm, node, torch.ops.trtllm_kv.cached_attention.default, attention_args, val(node))
        node.replace_all_uses_with(attention)
        gm.graph.erase_node(node)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    outputs = output.args[0]
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    output.args = (tuple(outputs + presents),)
    return len(attentions)
