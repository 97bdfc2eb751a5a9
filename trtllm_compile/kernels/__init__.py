"""Triton kernels of the `cuda` execution target, one file per op family, and CUDA C++ ones (`*.cu`, compiled
by NVRTC on first use: nvrtc.py).

`register_cuda_kernels()` makes them the CUDA implementations of the `trtllm::*` ops (whose bodies stay the
PyTorch references used on CPU). Triton is imported lazily, by the kernel modules, so importing this package
costs nothing on a machine without it. `trtllm::paged_attention` gets `cached_attention.paged_attention`,
which combines the paged decode kernel with SDPA for prefills.

`bind_cuda_kernels(gm)` points a graph's op calls straight at those kernels (the runtime's step graph on a
GPU): a custom op's dispatch (dispatcher hops, autograd and aliasing checks) costs the host about as much as
a small kernel, and an eager prefill makes hundreds of such calls.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.fx

logger = logging.getLogger(__name__)

TRITON_AVAILABLE: bool = importlib.util.find_spec("triton") is not None

CUDA_KERNELS: dict[str, Callable] = {}  # op name ("trtllm::rope") -> its CUDA implementation
_registered = False
_fixed_plans = False


@contextlib.contextmanager
def fixed_plans(enabled: bool = True) -> Iterator[None]:
    """Inside, every kernel takes a plan fixed by its row count: no autotuning (timing picks differently from
    run to run), no plan from a GEMM's N or from the attention's head count, no cuBLAS (its kernel follows the
    shape). A GEMM's output then has one summation order however its columns are sharded, which is what
    bit-identical outputs across tensor-parallel sizes need (CompileConfig.tp_invariant). Plans met inside are
    not cached for use outside, and the reverse."""
    global _fixed_plans
    previous, _fixed_plans = _fixed_plans, enabled
    try:
        yield
    finally:
        _fixed_plans = previous


def plans_fixed() -> bool:
    """Whether the caller runs inside `fixed_plans()`."""
    return _fixed_plans


def register_cuda_kernel(name: str, fn: Callable) -> Callable:
    """Make `fn` the CUDA implementation of op `name`, and the function `bind_cuda_kernels` binds to."""
    torch.library.register_kernel(name, "cuda", fn)
    CUDA_KERNELS[name] = fn
    return fn


def cuda_kernel(name: str) -> Callable[[Callable], Callable]:
    """Decorator form of `register_cuda_kernel`."""
    return lambda fn: register_cuda_kernel(name, fn)


def bind_cuda_kernels(gm: torch.fx.GraphModule) -> int:
    """Call the registered CUDA implementations directly instead of through their ops; the graph then runs on
    CUDA tensors only. Returns how many calls were bound."""
    from trtllm_compile.ops.library import bind_calls

    return bind_calls(gm, CUDA_KERNELS)


def register_cuda_kernels() -> bool:
    """Register the Triton kernels as the `cuda` kernels of the trtllm ops; safe to call many times.

    Returns False (and logs why) when Triton is not installed, leaving the PyTorch references in place.
    """
    global _registered
    if _registered:
        return True
    if not TRITON_AVAILABLE:
        logger.warning("triton is not installed: trtllm ops run their PyTorch references on CUDA (pip install triton)")
        return False
    import trtllm_compile.ops  # noqa: F401  (defines the ops)
    from trtllm_compile.kernels import activation, cached_attention, gemv, norm, rope

    for name, fn in {
        "trtllm::rms_norm": norm.rms_norm,
        "trtllm::add_rms_norm": norm.add_rms_norm,
        "trtllm::rope": rope.rope,
        "trtllm::mlp_activation": activation.mlp_activation,
        "trtllm::paged_attention": cached_attention.paged_attention,
        "trtllm::linear": gemv.linear,
    }.items():
        register_cuda_kernel(name, fn)
    _registered = True
    return True


@functools.cache
def tl_dtype(dtype: torch.dtype):
    """The `triton.language` dtype of a float torch dtype, for a kernel's dtype constexpr (imports Triton)."""
    import triton.language as tl

    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def is_interpreted(kernel: object) -> bool:
    """Whether `@triton.jit` built this kernel for Triton's CPU interpreter (TRITON_INTERPRET=1 then)."""
    return type(kernel).__name__ == "InterpretedFunction"


class _FirstConfig:
    """Launches a kernel with the first of its autotune configs."""

    def __init__(self, kernel, config) -> None:
        self.kernel, self.config = kernel, config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = dict(num_warps=self.config.num_warps, num_stages=self.config.num_stages)
            return self.kernel[grid](*args, **kwargs, **self.config.kwargs, **meta)

        return launch


class _Autotuned:
    """`triton.autotune` (cached per value of `key` and per argument dtype), except: under the interpreter,
    which cannot time kernels, while TRTLLM_TRITON_AUTOTUNE=0 (tests: one compile per shape instead of one per
    config), and inside `fixed_plans()`, the first config runs."""

    def __init__(self, kernel, configs: Sequence, key: Sequence[str]) -> None:
        import triton

        self.first = _FirstConfig(kernel, configs[0])
        self.tuned = None if is_interpreted(kernel) else triton.autotune(list(configs), list(key))(kernel)

    def __getitem__(self, grid):
        if self.tuned is None or _fixed_plans or os.environ.get("TRTLLM_TRITON_AUTOTUNE", "1") == "0":
            return self.first[grid]
        return self.tuned[grid]


def autotune(configs: Sequence, key: Sequence[str]) -> Callable:
    """Decorator form of `_Autotuned`; put the first config forward as the best default."""
    return lambda kernel: _Autotuned(kernel, configs, key)


def rows_view(t: torch.Tensor) -> torch.Tensor:
    """`t` as a 2-D [rows, last] tensor with a contiguous last dim; a view whenever the strides allow it."""
    if t.dim() == 0 or t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1]) if t.dim() != 2 else t
