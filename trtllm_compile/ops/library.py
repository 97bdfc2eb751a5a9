"""How a trtllm op is defined, and how a graph calls implementations of its ops without the dispatcher.

`custom_op` is `torch.library.custom_op` that keeps the op's PyTorch body in `REFERENCES`. A custom op's
dispatch (dispatcher hops, autograd and aliasing checks) costs the host 10-110 us a call on a CPU, more than
most of the op: `bind_references(gm)` points a CPU graph's calls straight at the bodies, as
`kernels.bind_cuda_kernels(gm)` points a GPU graph's at the kernels. A bound node keeps its op in
`node.meta["bound_op"]` (`fx_utils.is_op` sees it), and a bound body still shows under the op's name in a
profile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
import torch.fx

REFERENCES: dict[str, Callable] = {}  # op name ("trtllm::rope") -> its PyTorch body


def custom_op(name: str, fn: Callable | None = None, *, mutates_args: Iterable[str]):
    """`torch.library.custom_op(name, fn, mutates_args=...)` (or its decorator form), recording `fn` in REFERENCES."""

    def define(body: Callable):
        REFERENCES[name] = body
        return torch.library.custom_op(name, body, mutates_args=mutates_args)

    return define(fn) if fn is not None else define


def bind_calls(gm: torch.fx.GraphModule, implementations: dict[str, Callable]) -> int:
    """Call `implementations[op name]` directly wherever the graph calls that op; returns how many calls were
    bound. The graph then runs only where those implementations do."""
    bound = 0
    for node in gm.graph.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            fn = implementations.get(node.target.name())
            if fn is not None:
                node.meta["bound_op"], node.target, bound = node.target, fn, bound + 1
    gm.recompile()
    return bound


def bind_references(gm: torch.fx.GraphModule) -> int:
    """Call the trtllm ops' PyTorch bodies directly (what their dispatch runs on a CPU); the graph then runs on
    CPU tensors only. Returns how many calls were bound."""
    return bind_calls(gm, {name: _profiled(name, body) for name, body in REFERENCES.items()})


def _profiled(name: str, body: Callable) -> Callable:
    """`body`, recorded as `name` while a profiler runs (as the op's dispatch was)."""

    @functools.wraps(body)
    def call(*args, **kwargs):
        if not torch._C._autograd._profiler_enabled():
            return body(*args, **kwargs)
        with torch.profiler.record_function(name):
            return body(*args, **kwargs)

    return call
