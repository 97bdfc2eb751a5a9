"""Programmatic dependent launch (PDL): on Hopper and newer, a decode kernel starts while the one before it ends.

A decode step is a chain of short kernels, each waiting for the last. Between two of them the GPU idles: the
launch itself, then the first loads of the new kernel, while the old one's last programs finish on a few SMs.
With PDL a kernel launched with `**launch_args(device)` may start as soon as every program of the kernel before
it has started (each calls `start_next_then_wait` first thing). Its programs then do what depends on no other
kernel (a GEMV asks L2 for its first weight tile, `prefetch_l2`) and wait (`gdc_wait`) until the kernel before
has finished and its writes are visible. Nothing before that wait may read what a kernel of the step writes,
nor store anything: weights and scales, and what the host copied in before the step (positions, block tables);
the decode attention kernel also reads K/V rows of earlier steps there (kernels/paged_attention.py).

The wait is transitive (a kernel finishes only after its own wait), and a kernel launched without PDL (cuBLAS,
torch's own kernels) waits for the one before it as usual, so a chain that mixes them stays ordered. CUDA-graph
capture keeps these launches as programmatic edges. TRTLLM_PDL=0 turns PDL off (read on first use).
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

ENV = "TRTLLM_PDL"


@functools.cache
def _enabled(device_index: int) -> bool:
    if os.environ.get(ENV, "1") == "0":
        return False
    return torch.cuda.get_device_capability(device_index) >= (9, 0)


def enabled(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL: a CUDA GPU of compute capability 9.0 or newer, not turned off."""
    return device.type == "cuda" and _enabled(device.index if device.index is not None else torch.cuda.current_device())


def launch_args(device: torch.device) -> dict:
    """A kernel's launch keywords for its `PDL` constexpr (and Triton's `launch_pdl` where it is on)."""
    return {"PDL": True, "launch_pdl": True} if enabled(device) else {"PDL": False}


@triton.jit
def start_next_then_wait(PDL: tl.constexpr):
    """With PDL, let the next kernel launch, then wait for the previous one; without, nothing."""
    if PDL:
        gdc_launch_dependents()
        gdc_wait()


@triton.jit
def prefetch_l2(row_ptrs, row_bytes, ROW_BYTES: tl.constexpr):
    """Ask L2 for the lines that hold the first min(ROW_BYTES, row_bytes) bytes from each of `row_ptrs` ([R]
    pointers; ROW_BYTES a power of two), one prefetch per 128-byte line, without waiting for them: a later load
    finds them there. Nothing past row_bytes is touched, so the end of a tensor is never crossed."""
    LINES: tl.constexpr = (ROW_BYTES + 127) // 128
    offsets = tl.minimum(tl.arange(0, LINES) * 128, row_bytes - 1)
    lines = row_ptrs.to(tl.pointer_type(tl.int8))[:, None] + offsets[None, :]
    tl.inline_asm_elementwise(
        "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;",
        "=r,l",
        [lines.to(tl.int64)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )
