"""CUDA C++ kernels of the `cuda` target: `*.cu` files beside this one, compiled by NVRTC on first use (torch's
`torch.cuda._compile_kernel`, about a second an instance) and launched through the driver's cuLaunchKernelEx, with
PDL where kernels/pdl.py has it on (the kernel then calls `griddepcontrol.wait` before it reads what the kernel
before it wrote, as the Triton kernels' `start_next_then_wait` does).

Where Triton cannot place data as a kernel needs it (tensor-core operand fragments loaded straight from global
memory, kernels/int4_gemv_mma.cu), CUDA can. A launch takes tensors (their data pointers) and Python ints (C
ints), on the current stream of the tensors' device, so it is CUDA-graph capturable.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION


class _LaunchAttribute(ctypes.Structure):  # CUlaunchAttribute: an id, then a 64-byte value union at offset 8
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int), ("rest", ctypes.c_char * 60)]


class _LaunchConfig(ctypes.Structure):  # CUlaunchConfig
    _fields_ = [
        *((name, ctypes.c_uint) for name in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z")),
        ("shared_bytes", ctypes.c_uint),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_LaunchAttribute)),
        ("num_attrs", ctypes.c_uint),
    ]


@functools.cache
def kernel(source: Path, name: str, device: torch.device):
    """The kernel `name` (a template instance: "f<true, 2>") of the CUDA file `source`, compiled for `device`."""
    try:
        with torch.cuda.device(device):
            return torch.cuda._compile_kernel(source.read_text(), name, nvcc_options=["-std=c++17"])
    except Exception as error:  # the plans' tuner skips what fails: say so once, with the fix
        _warn_uncompiled(source, f"{type(error).__name__}: {error}")
        raise RuntimeError(f"NVRTC could not compile {name} from {source.name}: {error}") from error


@functools.cache
def _warn_uncompiled(source: Path, error: str) -> None:
    logger.warning(
        "the CUDA kernels of %s do not compile here (%s), so their plans are skipped and slower ones run. NVRTC "
        "needs the CUDA headers torch finds through CUDA_HOME: install the CUDA toolkit of torch's CUDA version.",
        source.name,
        error[:300],
    )


@functools.cache
def _driver() -> ctypes.CDLL:
    """The CUDA driver library, opened once (torch's helper opens it anew on every call)."""
    return torch.cuda._utils._get_gpu_runtime_library()


def launch(compiled, grid: tuple[int, ...], block: int, args: list, device: torch.device, pdl: bool) -> None:
    """Launch a `kernel` on `device`'s current stream: grid (up to 3 dims) of `block` threads; `args` tensors (as
    pointers) and ints; with `pdl`, programmatically dependent on the kernel before it."""
    values = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, torch.Tensor) else ctypes.c_int(a) for a in args]
    params = (ctypes.c_void_p * len(values))(*(ctypes.cast(ctypes.byref(v), ctypes.c_void_p) for v in values))
    attribute = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION, value=1)
    grid = (*grid, 1, 1)[:3]
    config = _LaunchConfig(*grid, block, 1, 1, 0, torch.cuda.current_stream(device).cuda_stream)
    config.attrs, config.num_attrs = ctypes.pointer(attribute), int(pdl)
    result = _driver().cuLaunchKernelEx(ctypes.byref(config), compiled.func, params, None)
    if result != 0:
        raise RuntimeError(f"cuLaunchKernelEx failed with CUDA error {result}")
