"""kernels/nvrtc.py: CUDA C++ kernels compiled on first use. Its launches run in the GPU tests of the kernels that
use it (tests/kernels/test_gemv_int4_kernels.py: the mma plans, and in a CUDA graph)."""

from __future__ import annotations

import logging

import pytest
import torch

from trtllm_compile.kernels import nvrtc


def test_a_kernel_that_does_not_compile_raises_and_says_what_to_install(tmp_path, caplog):
    """The plans' tuner skips a plan whose kernel fails; the failure must still be said, with its fix (on CPU,
    no CUDA; on a GPU, NVRTC's error on this source)."""
    source = tmp_path / "broken.cu"
    source.write_text("this is not CUDA\n")
    with caplog.at_level(logging.WARNING, logger=nvrtc.__name__):
        for name in ("f<1>", "f<2>"):
            with pytest.raises(RuntimeError, match=r"NVRTC could not compile f<\d> from broken.cu"):
                nvrtc.kernel(source, name, torch.device("cuda", 0))
    warnings = [record.getMessage() for record in caplog.records if "do not compile here" in record.getMessage()]
    assert warnings and all("broken.cu" in w and "CUDA_HOME" in w for w in warnings)
