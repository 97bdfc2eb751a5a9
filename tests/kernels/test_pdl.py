"""Programmatic dependent launch (kernels/pdl.py): when it is on, and what the kernels compile to with it.

The GPU side (a decode step's kernels chained with PDL inside CUDA graphs give the references' results) is every
`gpu` test of tests/kernels and tests/runtime: PDL is on by default on the lent H100s. Here, on CPU, the kernels are
compiled for an sm_90 target (Triton's own ptxas, no GPU needed) and their PTX is read.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed (pip install triton)")

# Compiles two decode kernels for sm_90 with PDL on and off and prints how often each PDL instruction appears.
_COMPILE = r"""
from trtllm_compile.kernels import gemv, norm

OPS = ("griddepcontrol.wait", "griddepcontrol.launch_dependents", "prefetch.global.L2")
counts = {}
for on in (True, False):
    fp8_gemv = ptx(
        gemv._gemv_fma_kernel,
        ["*bf16", "*fp8e4nv", "*bf16", "*bf16", "*fp32", "*i32"] + ["i32"] * 6 + ["*fp32", "*fp32", "i32", "*bf16"],
        dict(HAS_BIAS=False, SPLIT=False, EVEN_K=True, PREFETCH=True, BLOCK_M=1, BLOCK_N=16, BLOCK_K=1024,
             FP8_X=True, INT4=False, HAS_ZEROS=False, GROUP_SIZE=1, PDL=on, F16_MAC=True),
    )
    rms_norm = ptx(
        norm._rms_norm_kernel,
        ["*bf16"] * 5 + ["i32"] * 5 + ["fp32"],
        dict(HAS_RESIDUAL=True, UNIT_OFFSET=False, BLOCK_N=4096, PDL=on),
    )
    for name, text in (("gemv", fp8_gemv), ("norm", rms_norm)):
        counts[f"{name} pdl={on}"] = {op: text.count(op) for op in OPS}
        if on:
            counts[f"{name} loads before the wait"] = text[: text.find("griddepcontrol.wait")].count("ld.global")
print(json.dumps(counts))
"""


def test_launch_args_turn_pdl_on_only_for_a_hopper_gpu_unless_turned_off(monkeypatch):
    from trtllm_compile.kernels import pdl

    assert pdl.launch_args(torch.device("cpu")) == {"PDL": False}
    monkeypatch.setenv(pdl.ENV, "0")
    pdl._enabled.cache_clear()
    try:  # read before the device is asked for its compute capability, so this runs without a GPU
        assert pdl.launch_args(torch.device("cuda", 0)) == {"PDL": False}
    finally:
        pdl._enabled.cache_clear()


def test_decode_kernels_compile_to_grid_dependency_control_for_sm90(sm90_ptx):
    counts = sm90_ptx(_COMPILE)
    for kernel in ("gemv", "norm"):
        on, off = counts[f"{kernel} pdl=True"], counts[f"{kernel} pdl=False"]
        assert on["griddepcontrol.wait"] >= 1 and on["griddepcontrol.launch_dependents"] >= 1, (kernel, on)
        assert off == {op: 0 for op in off}, (kernel, off)
    # the GEMV asks L2 for its first weight tile before it waits; the norm loads its weight (both are constants)
    assert counts["gemv pdl=True"]["prefetch.global.L2"] >= 1
    assert counts["norm pdl=True"]["prefetch.global.L2"] == 0
    assert counts["norm loads before the wait"] >= 1
