"""`QuantLinear`: the drop-in replacement of an `nn.Linear` whose forward calls one trtllm quantized op.

Every tensor is a frozen `nn.Parameter` (requires_grad=False), so `torch.compile` capture freezes it into a
constant beside the float weights and a later pass or converter reads the scales as it reads any weight.
`input_multiplier` is the 1/s of a smoothing or AWQ scale that could not be folded into the op producing the
input (TensorRT-LLM's "pre_quant_scale"); it is None where the fold happened.
"""

from __future__ import annotations

import torch
from torch import nn

from trtllm_compile.ops import quant as quant_ops  # noqa: F401  (registers torch.ops.trtllm.*_linear)
from trtllm_compile.quantization.formats import QuantizedWeight


def _frozen(t: torch.Tensor | None) -> nn.Parameter | None:
    return None if t is None else nn.Parameter(t, requires_grad=False)


class QuantLinear(nn.Module):
    """y = op(x * input_multiplier, weight, scales..., bias) with op = trtllm::{fp8,int8,int4}_linear."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        quantized: QuantizedWeight,
        bias: torch.Tensor | None = None,
        input_multiplier: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.op_name = quantized.op
        self.group_size = quantized.group_size
        self.weight = _frozen(quantized.weight)
        self.weight_scale = _frozen(quantized.weight_scale)
        self.zeros = _frozen(quantized.zeros)
        self.input_scale = _frozen(quantized.input_scale)
        self.bias = _frozen(bias)
        self.input_multiplier = _frozen(input_multiplier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_multiplier is not None:
            x = x * self.input_multiplier
        ops = torch.ops.trtllm
        if self.op_name == "int4_linear":
            return ops.int4_linear(x, self.weight, self.weight_scale, self.zeros, self.group_size, self.bias)
        if self.op_name == "fp8_linear":
            return ops.fp8_linear(x, self.weight, self.weight_scale, self.input_scale, self.bias)
        return ops.int8_linear(x, self.weight, self.weight_scale, self.input_scale, self.bias)

    def spec(self) -> dict:
        """JSON description from which `from_spec` rebuilds an empty module of the same layout."""
        shapes = {
            name: {"shape": list(p.shape), "dtype": str(p.dtype).removeprefix("torch.")}
            for name, p in self.named_parameters(recurse=False)
        }
        return {
            "op": self.op_name,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "group_size": self.group_size,
            "tensors": shapes,
        }

    @classmethod
    def from_spec(cls, spec: dict, device: str | torch.device = "meta") -> QuantLinear:
        tensors = {
            name: torch.empty(t["shape"], dtype=getattr(torch, t["dtype"]), device=device)
            for name, t in spec["tensors"].items()
        }
        quantized = QuantizedWeight(
            spec["op"],
            tensors["weight"],
            tensors["weight_scale"],
            zeros=tensors.get("zeros"),
            input_scale=tensors.get("input_scale"),
            group_size=spec["group_size"],
        )
        return cls(
            spec["in_features"],
            spec["out_features"],
            quantized,
            bias=tensors.get("bias"),
            input_multiplier=tensors.get("input_multiplier"),
        )

    def extra_repr(self) -> str:
        parts = [f"{self.in_features}, {self.out_features}, op={self.op_name}"]
        if self.group_size:
            parts.append(f"group_size={self.group_size}")
        if self.op_name != "int4_linear":
            parts.append("static input scale" if self.input_scale is not None else "dynamic per-token input scale")
        if self.input_multiplier is not None:
            parts.append("input multiplier")
        return ", ".join(parts)
