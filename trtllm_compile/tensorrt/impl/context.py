"""The state one FX graph -> TensorRT network conversion carries: the network, converted values, and the weights
TensorRT reads from host memory until the engine is built."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx

from trtllm_compile.tensorrt.trt import require_trt


@dataclass(frozen=True)
class FrozenTensor:
    """A graph constant (a `get_attr` weight) not yet placed in the network: converters choose its layout, and
    every use of it shares one named `trt.Weights` (so a refit finds it by name)."""

    name: str
    tensor: torch.Tensor


@dataclass
class ConversionContext:
    network: object
    gm: torch.fx.GraphModule
    node: torch.fx.Node | None = None
    keepalive: list[torch.Tensor] = field(default_factory=list)
    named_weights: dict[str, object] = field(default_factory=dict)  # refit name -> trt.Weights
    cache: dict[object, object] = field(default_factory=dict)  # values shared by many nodes
    input_sizes: dict[str, tuple[object, int] | None] = field(default_factory=dict)  # symbol -> (input, dim)
    specialized: dict[str, int] = field(default_factory=dict)  # symbols this network fixes (decode: tokens = 1)

    @property
    def trt(self):
        return require_trt()

    @property
    def net(self):
        return self.network

    def output_dtype(self, index: int | None = None) -> torch.dtype:
        """The dtype torch gives the current node's output (`index` into a tuple of outputs)."""
        value = self.node.meta["val"]
        return (value[index] if index is not None else value).dtype
