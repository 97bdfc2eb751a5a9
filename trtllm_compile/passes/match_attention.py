"""Match attention into `trtllm.attention`: SDPA calls (with GQA or with HF's `repeat_kv`) and eager attention
(matmul, scale, optional soft-capping and mask, softmax, matmul), the variants side by side as in inductor's
fuse_attention.py."""

from __future__ import annotations

import inspect
import itertools

import torch
import torch.fx
import torch.nn.functional as F

from trtllm_compile.passes.patterns import PatternSet, pattern_set
from trtllm_compile.passes.registry import Stage, register_pass

# Example values of the scalar inputs: matched literals at their positions become replacement arguments.
EXAMPLE_SCALARS = {"scale": 0.125, "softcap": 30.0}


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Hugging Face's repeat_kv: [B, Hkv, S, D] -> [B, Hkv * n_rep, S, D]."""
    b, h, s, d = x.shape
    return x[:, :, None, :, :].expand(b, h, n_rep, s, d).reshape(b, h * n_rep, s, d)


def sdpa_attention(q, k, v, mask=None, scale=None, *, is_causal: bool, kv_heads: str):
    """kv_heads: "gqa" (SDPA's enable_gqa), "repeat_kv" (HF's expand + reshape) or "mha" (equal heads)."""
    if kv_heads == "repeat_kv":  # the group size comes from the shapes, so the exact re-check sees the model's
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    gqa = {"enable_gqa": True} if kv_heads == "gqa" else {}
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale, **gqa)


def eager_attention(q, k, v, mask=None, scale=None, softcap=None, *, repeats_kv: bool, form: str):
    """form: "llama" (fp32 softmax, cast back), "gpt2" (softmax in the input dtype) or "gptj" (fp32 scores)."""
    if repeats_kv:
        k, v = repeat_kv(k, q.shape[1] // k.shape[1]), repeat_kv(v, q.shape[1] // v.shape[1])
    if form == "gptj":
        q, k = q.to(torch.float32), k.to(torch.float32)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores + mask
    probs = F.softmax(scores, dim=-1, dtype=torch.float32 if form == "llama" else None).to(v.dtype)
    return torch.matmul(probs, v)


def fused_attention(q, k, v, mask=None, scale=None, softcap=None, *, is_causal: bool = False):
    scale = scale if scale is not None else q.shape[-1] ** -0.5  # SDPA's default
    return torch.ops.trtllm.attention(q, k, v, mask, scale, is_causal, -1, softcap or 0.0)


def _variant(fn, names: list[str], **fixed):
    """`fn` with `fixed` bound and a signature naming exactly `names`: the pattern's traced inputs."""

    def bound(*args):
        return fn(**dict(zip(names, args, strict=True)), **fixed)

    bound.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in names]
    )
    return bound


def _example_inputs(names: list[str], kv_heads: int):
    def make(dtype):
        values = {
            "q": torch.randn(2, 4, 3, 8, dtype=dtype),
            "k": torch.randn(2, kv_heads, 3, 8, dtype=dtype),
            "v": torch.randn(2, kv_heads, 3, 8, dtype=dtype),
            "mask": torch.zeros(2, 1, 3, 3, dtype=dtype),
            **EXAMPLE_SCALARS,
        }
        return [values[name] for name in names]

    return make


@pattern_set("attention")
def _attention_patterns(patterns: PatternSet) -> None:
    # Variants with a mask first: the maskless ones are sub-patterns of them.
    for with_mask, is_causal, kv_heads in itertools.product((True, False), (False, True), ("repeat_kv", "gqa", "mha")):
        names = ["q", "k", "v", *(["mask"] if with_mask else []), "scale"]
        patterns.add(
            _variant(sdpa_attention, names, is_causal=is_causal, kv_heads=kv_heads),
            _variant(fused_attention, names, is_causal=is_causal),
            _example_inputs(names, kv_heads=4 if kv_heads == "mha" else 2),
            scalars={"scale": EXAMPLE_SCALARS["scale"]},
        )
    for form, softcap, with_mask, repeats_kv in itertools.product(("llama", "gpt2", "gptj"), *[(True, False)] * 3):
        if form != "llama" and (softcap or repeats_kv):
            continue  # GPT-2 and GPT-J forms have neither
        names = ["q", "k", "v", *(["mask"] if with_mask else []), "scale", *(["softcap"] if softcap else [])]
        patterns.add(
            _variant(eager_attention, names, repeats_kv=repeats_kv, form=form),
            _variant(fused_attention, names),
            _example_inputs(names, kv_heads=2 if repeats_kv else 4),
            scalars={name: EXAMPLE_SCALARS[name] for name in names if name in EXAMPLE_SCALARS},
        )


@register_pass(Stage.MATCH)
def match_attention(gm: torch.fx.GraphModule, config) -> int:
    """SDPA / eager attention (GQA via repeat_kv or enable_gqa, masks, soft-capping) -> trtllm.attention."""
    return _attention_patterns.apply(gm)
