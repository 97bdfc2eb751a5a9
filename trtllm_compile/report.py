"""CompileReport: what each compile matched, what it left in plain PyTorch, and why."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.fx

from trtllm_compile.fx_utils import aten, op_name
from trtllm_compile.ops.families import family_of
from trtllm_compile.passes.registry import PassResult

FAMILIES = ("attention", "rope", "mlp", "norm")

# Ops that, left in a graph after matching, mean a family's subgraph was not fused.
_UNFUSED_SIGNS = {
    aten.scaled_dot_product_attention.default: ("attention", "SDPA call did not match an attention pattern"),
    aten.softmax.int: ("attention", "softmax is not part of a recognised q @ k^T -> softmax -> @ v subgraph"),
    aten._softmax.default: (
        "attention",
        "softmax is not part of a recognised q @ k^T -> softmax -> @ v subgraph",
    ),
    aten.rsqrt.default: (
        "norm",
        "rsqrt is not part of a recognised RMSNorm (x * rsqrt(mean(x^2) + eps) * w)",
    ),
    aten.layer_norm.default: ("norm", "layer_norm does not normalize over the last dim only"),
    aten.silu.default: ("mlp", "activation does not sit between GEMMs (linear -> act -> linear)"),
    aten.gelu.default: ("mlp", "activation does not sit between GEMMs (linear -> act -> linear)"),
    aten.neg.default: ("rope", "negation is not part of a recognised rotate-half / interleaved RoPE"),
}


@dataclass(frozen=True)
class Fallback:
    """A node left as plain PyTorch, with the family it belongs to and the reason."""

    node: str
    op: str
    family: str
    reason: str


@dataclass
class CompileReport:
    matches: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    fallbacks: list[Fallback] = field(default_factory=list)
    passes: list[PassResult] = field(default_factory=list)
    num_graphs: int = 0

    @classmethod
    def from_graph(cls, gm: torch.fx.GraphModule, passes: list[PassResult]) -> CompileReport:
        matches = Counter(dict.fromkeys(FAMILIES, 0))
        fallbacks = []
        for node in gm.graph.nodes:
            if node.op != "call_function":
                continue
            family = family_of(node.target)
            if family is not None:
                matches[family] += 1
                if node.kwargs.get("cos") is not None:  # fold_rope_into_paged_attention: q's and k's ropes
                    matches["rope"] += 2
            elif node.target in _UNFUSED_SIGNS:
                family, reason = _UNFUSED_SIGNS[node.target]
                fallbacks.append(Fallback(node.name, op_name(node), family, reason))
        return cls(dict(matches), fallbacks, list(passes), 1)

    def merge(self, other: CompileReport) -> CompileReport:
        """The report of two graphs of one model (graph breaks, or prefill and decode shapes)."""
        matches = Counter(self.matches)
        matches.update(other.matches)
        return CompileReport(
            dict(matches),
            self.fallbacks + other.fallbacks,
            self.passes + other.passes,
            self.num_graphs + other.num_graphs,
        )

    def summary(self) -> str:
        """One line: fused counts per family and how many nodes fell back."""
        fused = ", ".join(f"{family} {self.matches.get(family, 0)}" for family in FAMILIES)
        return f"fused {fused}; {len(self.fallbacks)} node(s) left in PyTorch"

    def __str__(self) -> str:
        lines = [f"trtllm compile report ({self.num_graphs} graph{'s' if self.num_graphs != 1 else ''})"]
        lines.append("  fused: " + ", ".join(f"{family} {self.matches.get(family, 0)}" for family in FAMILIES))
        rewrites = Counter()
        for result in self.passes:
            rewrites[result.name] += result.num_rewrites
        lines.append("  passes: " + (", ".join(f"{name} {n}" for name, n in rewrites.items() if n) or "none"))
        if not self.fallbacks:
            lines.append("  fallbacks: none")
        else:
            lines.append(f"  fallbacks ({len(self.fallbacks)} nodes left in PyTorch):")
            by_reason = Counter((f.family, f.op, f.reason) for f in self.fallbacks)
            for (family, op, reason), count in by_reason.most_common():
                lines.append(f"    {family:<9} {op:<36} x{count}  {reason}")
        return "\n".join(lines)
