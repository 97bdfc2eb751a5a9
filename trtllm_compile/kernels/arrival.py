"""Arrival counts: the last program of a group to finish runs the group's epilogue, so no second kernel does.

A split-K GEMV (kernels/gemv.py) and a split decode attention (kernels/paged_attention.py) each leave partial
results that must be combined. A second kernel for that costs a launch (about 2 us in a decode step's CUDA graph,
next to GEMVs of 7 to 25 us) per GEMM or layer. Instead every program stores its partial and counts itself in on
its group's counter (`last_to_arrive`); the one that finds all the others already counted combines the partials,
in a fixed order so the result does not depend on which finished last, and sets the counter back to zero.

One buffer of counters per device (`counts`) serves every kernel: each launch leaves them at zero, and kernels on
a device run in stream order (with PDL a program counts only after its wait, kernels/pdl.py), so two launches
never share a counter at once.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

MAX_GROUPS = 1 << 20  # counters a launch may use (4 MiB a device)


@functools.cache
def _counts(device: torch.device) -> Tensor:
    return torch.zeros(MAX_GROUPS, dtype=torch.int32, device=device)


def counts(device: torch.device, groups: int) -> Tensor:
    """The zeroed arrival counters of a launch whose programs form `groups` groups (one counter each)."""
    if groups > MAX_GROUPS:
        raise ValueError(f"a launch of {groups} groups of partial results: at most {MAX_GROUPS}; use larger tiles")
    return _counts(device)


@triton.jit
def last_to_arrive(counts_ptr, group, programs):
    """Count this program in on `group`'s counter, once every thread has stored its partial; true for the last of
    the group's `programs` programs, which then sees every partial (loaded from L2: `cache_modifier=".cg"`) and
    has re-armed the counter for the next launch."""
    tl.debug_barrier()  # the partials of every thread are stored before the count is taken (released with it)
    arrived = tl.atomic_add(counts_ptr + group, 1, sem="acq_rel", scope="gpu")
    last = arrived == programs - 1
    if last:
        tl.atomic_xchg(counts_ptr + group, 0)
    return last
