"""Shared set-up of the Triton kernel tests: interpreter switch, tolerances, and the reference runner.

Each kernel is tested two ways: on CPU through Triton's interpreter at tiny sizes (launchers called directly),
and on a CUDA GPU at realistic sizes (tests marked `gpu`), also through `torch.ops.trtllm.*`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import torch

# Triton's interpreter is switched on for CPU-only machines in tests/conftest.py, before anything imports triton.
# Autotuning every parametrization would compile each kernel once per config; tests check the first config
# (the default), and one test per family turns autotuning back on with monkeypatch.
os.environ.setdefault("TRTLLM_TRITON_AUTOTUNE", "0")

# (atol, rtol) per dtype. The kernels follow the references' casts (so elementwise results differ only where
# fp32 intermediates differ by an ulp: reduction order, exp/erf/rsqrt implementations), and rtol 2**-7 (bf16),
# 2**-10 (fp16) is one ulp of the output dtype at any magnitude. Attention differs more: the online softmax
# reorders the sums, and on tensor cores the probabilities are rounded to the input dtype before P @ V.
TOLERANCES = {
    "elementwise": {torch.float32: (1e-5, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)},
    "attention": {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)},
}
# Triton's interpreter truncates fp32 -> bf16 casts (runtime/interpreter.py passes no rounding mode) where the
# GPU rounds to nearest even, so each rounding step may be off by one more ulp: two ulps of operands up to 4.
INTERPRETER_BF16 = (3.2e-2, 1.6e-2)

GPU_REASON = "needs a CUDA GPU (run `pytest -m gpu tests/kernels` on the device machine)"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip(GPU_REASON)


@pytest.fixture
def interpreted():
    """Import a kernel module that must run under Triton's interpreter, or skip saying why it cannot."""

    def load(family: str):
        if torch.cuda.is_available():
            pytest.skip("CUDA is available: the kernels compile for the GPU; interpreter tests run CPU-only")
        pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
        module = importlib.import_module(f"trtllm_compile.kernels.{family}")
        if not module.INTERPRETED:
            pytest.skip(
                f"trtllm_compile.kernels.{family} was imported before TRITON_INTERPRET=1 was set by "
                "tests/kernels/conftest.py; run `TRITON_INTERPRET=1 pytest tests/kernels`"
            )
        return module

    return load


@pytest.fixture
def assert_matches():
    """assert_close with the tolerance of a kernel family and dtype (TOLERANCES above); `rounds_to` names
    the narrowest dtype the computation rounds through when it is not the output's (bf16 x, fp32 weight)."""

    def check(actual, expected, family: str = "elementwise", rounds_to: torch.dtype | None = None) -> None:
        assert actual.dtype == expected.dtype and actual.shape == expected.shape
        rounds_to = rounds_to or expected.dtype
        atol, rtol = TOLERANCES[family][rounds_to]
        if rounds_to == torch.bfloat16 and actual.device.type == "cpu":
            atol, rtol = max(atol, INTERPRETER_BF16[0]), max(rtol, INTERPRETER_BF16[1])
        torch.testing.assert_close(actual.cpu(), expected.cpu(), atol=atol, rtol=rtol)

    return check


@pytest.fixture
def reference():
    """Run a trtllm op's PyTorch body: on CPU copies of the arguments, the result moved back to the device."""

    def run(op, *args):
        device = next(a.device for a in args if isinstance(a, torch.Tensor))
        cpu = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        result = op(*cpu)
        if isinstance(result, tuple):
            return tuple(r.to(device) for r in result)
        return result.to(device)

    return run


@pytest.fixture
def cuda_ops():
    """`torch.ops.trtllm` with the Triton kernels registered for CUDA."""
    from trtllm_compile.kernels import register_cuda_kernels

    assert register_cuda_kernels()
    return torch.ops.trtllm


# What `sm90_ptx` runs before a test's script: `ptx(kernel, types, constexprs, num_warps, aligned)` compiles a
# @triton.jit kernel for sm_90 (arguments typed by `types`, then the constexprs; `aligned`: indices of arguments
# specialized as 16-byte divisible, as a launch with aligned tensors would) and returns its PTX.
_SM90_PRELUDE = r"""
import json, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def ptx(kernel, types, constexprs, num_warps=4, aligned=()):
    signature = dict(zip(kernel.arg_names, types + ["constexpr"] * len(constexprs)))
    index = {(kernel.arg_names.index(name),): value for name, value in constexprs.items()}
    attrs = {(i,): [["tt.divisibility", 16]] for i in aligned}
    src = ASTSource(fn=kernel, signature=signature, constexprs=index, attrs=attrs)
    options = dict(num_warps=num_warps, launch_pdl=constexprs.get("PDL", False))
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]
"""


@pytest.fixture
def sm90_ptx():
    """Run a script that compiles kernels for sm_90 with Triton's own ptxas (no GPU, no interpreter: a subprocess
    without TRITON_INTERPRET) through the prelude's `ptx`, and return the JSON it prints last; skip where this
    Triton ships no ptxas."""

    def run(script: str):
        pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        command = [sys.executable, "-c", _SM90_PRELUDE + script]
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if done.returncode and "ptxas" in done.stderr and "not found" in done.stderr.lower():
            pytest.skip(f"Triton's ptxas is missing here: {done.stderr[-300:]}")
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run
