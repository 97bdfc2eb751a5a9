"""fuse_int4_gated_mlp: a gated MLP's INT4 gate/up GEMM and its activation become one `trtllm::int4_gated_linear`.

Fused, the graph computes the same values to the bit on CPU (the op's reference is the GEMM, then the activation
of its halves). A GEMM whose output is read elsewhere, halves that are not [:I] and [I:], and the plain (ungated)
activation stay as they are. The INT4 step graph of a tiny Llama fuses every layer, sharded or not, and its
report still counts one MLP a layer. The CUDA kernel: tests/kernels/test_gemv_int4_kernels.py.
"""

from __future__ import annotations

import pytest
import torch
from support import LAYERS, TINY_MODELS

from trtllm_compile.config import CompileConfig
from trtllm_compile.ops.quant import pack_int4
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.passes.fuse_int4_gated_mlp import fuse_int4_gated_mlp
from trtllm_compile.quantization import QuantConfig, calibrate
from trtllm_compile.quantization.formats import int4_codes
from trtllm_compile.runtime.step_graph import export_step_graph, fuse_step_graph

ops = torch.ops.trtllm
HIDDEN, INTERMEDIATE, GROUP = 64, 48, 32


def _gate_up():
    gen = torch.Generator().manual_seed(0)
    codes, scales, zeros = int4_codes(torch.randn(2 * INTERMEDIATE, HIDDEN, generator=gen) / 8, GROUP, True)
    return pack_int4(codes), scales, zeros


PACKED, SCALES, ZEROS = _gate_up()
X = torch.randn(1, 3, HIDDEN, generator=torch.Generator().manual_seed(1))


def _gemm(x):
    return ops.int4_linear(x, PACKED, SCALES, ZEROS, GROUP, None)


def _swiglu(x):
    y = _gemm(x)
    return ops.mlp_activation(y[..., :INTERMEDIATE], y[..., INTERMEDIATE:], "silu")


def _geglu_three_dims(x):
    y = _gemm(x)
    return ops.mlp_activation(y[:, :, :INTERMEDIATE], y[:, :, INTERMEDIATE:], "gelu_tanh")


def _gemm_read_elsewhere(x):
    y = _gemm(x)
    return ops.mlp_activation(y[..., :INTERMEDIATE], y[..., INTERMEDIATE:], "silu"), y


def _other_halves(x):  # up first: the op's weight would be [up; gate]
    y = _gemm(x)
    return ops.mlp_activation(y[..., INTERMEDIATE:], y[..., :INTERMEDIATE], "silu")


def _plain_activation(x):
    return ops.mlp_activation(_gemm(x), None, "gelu")


@pytest.mark.parametrize("fn", [_swiglu, _geglu_three_dims], ids=["swiglu", "geglu-sliced-on-dim-2"])
def test_gated_activation_of_the_gemm_fuses_and_computes_the_same(trace, run_pass, op_counts, fn):
    gm = trace(fn, X)
    assert run_pass(fuse_int4_gated_mlp, gm) == 1
    counts = op_counts(gm)
    assert counts["trtllm.int4_gated_linear"] == 1
    assert counts["trtllm.int4_linear"] == counts["trtllm.mlp_activation"] == counts["aten.slice"] == 0
    assert torch.equal(gm(X), fn(X))


@pytest.mark.parametrize(
    "fn", [_gemm_read_elsewhere, _other_halves, _plain_activation], ids=["gemm-read-elsewhere", "up-first", "plain"]
)
def test_what_is_not_a_gate_up_pair_stays(trace, run_pass, op_counts, fn):
    gm = trace(fn, X)
    assert run_pass(fuse_int4_gated_mlp, gm) == 0
    assert op_counts(gm)["trtllm.int4_gated_linear"] == 0


@pytest.mark.parametrize("world_size", [1, 2])
def test_int4_step_graphs_fuse_every_layer(world_size):
    model = TINY_MODELS["llama"].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, progress=False)
    quantization = QuantConfig.from_name("int4_awq", group_size=GROUP).with_calibration(calibration)
    tp = TensorParallelConfig(0, world_size) if world_size > 1 else None
    config = CompileConfig(quantization=quantization, tensor_parallel=tp)
    step = fuse_step_graph(export_step_graph(model), model.config, config)
    assert {r.name: r.num_rewrites for r in step.report.passes}["fuse_int4_gated_mlp"] == LAYERS
    assert step.report.matches["mlp"] == LAYERS
