"""Rewrite GELU written out with tanh (GPT-2's NewGELU, GPT-J's gelu_new) into `aten.gelu(approximate="tanh")`,
so the MLP matcher sees one activation node whatever way the model spelled it."""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F

from trtllm_compile.passes.patterns import PatternSet, pattern_set
from trtllm_compile.passes.registry import Stage, register_pass


def gelu_tanh_explicit(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


@pattern_set("gelu_tanh")
def _gelu_patterns(patterns: PatternSet) -> None:
    patterns.add(
        gelu_tanh_explicit,
        lambda x: F.gelu(x, approximate="tanh"),
        lambda dtype: [torch.randn(2, 3, 8, dtype=dtype)],
        dtypes=(torch.float32,),
    )


@register_pass(Stage.CANONICALIZE)
def canonicalize_gelu(gm: torch.fx.GraphModule, config) -> int:
    """0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) -> aten.gelu(x, approximate="tanh")."""
    return _gelu_patterns.apply(gm)
