"""match_rms_norm and match_layer_norm: Hugging Face's RMSNorm forms and aten.layer_norm become trtllm ops."""

from __future__ import annotations

import pytest
import torch
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from trtllm_compile.passes.match_norm import match_layer_norm, match_rms_norm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = 32
# unit_offset -> the Hugging Face module of that form.
HF_NORMS = {False: LlamaRMSNorm, True: Gemma3RMSNorm}


def _x(dtype, shape=(2, 3, HIDDEN)):
    return (3 * torch.randn(shape, generator=torch.Generator().manual_seed(0))).to(dtype)


def _hf_norm(unit_offset: bool, dtype=torch.float32, eps=1e-6) -> torch.nn.Module:
    torch.manual_seed(0)
    norm = HF_NORMS[unit_offset](HIDDEN, eps=eps)
    torch.nn.init.normal_(norm.weight, std=0.5)
    return norm.to(dtype).eval()


@pytest.mark.parametrize("unit_offset", [False, True], ids=["llama", "gemma"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_hf_rms_norm_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype, unit_offset):
    norm = _hf_norm(unit_offset, dtype, eps=1e-5)
    gm = trace(norm, _x(dtype))
    assert run_pass(match_rms_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.rms_norm": 1}
    (args,) = call_args(gm, torch.ops.trtllm.rms_norm.default)
    assert (args["eps"], args["unit_offset"]) == (1e-5, unit_offset)  # the model's eps, not the pattern's
    assert_same_outputs(gm, norm, _x(dtype))


def test_llama_norm_of_bf16_activations_with_fp32_weight(trace, run_pass, op_counts, assert_same_outputs):
    norm = _hf_norm(False, torch.float32)
    gm = trace(norm, _x(torch.bfloat16))
    assert run_pass(match_rms_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.rms_norm": 1}
    assert_same_outputs(gm, norm, _x(torch.bfloat16))


def test_every_norm_of_a_block_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    # Gemma 3's sandwich: norms before and after the sublayer, and one per head (q/k norms, on [B, H, S, D]).
    pre, post, q_norm = _hf_norm(True), _hf_norm(True), Gemma3RMSNorm(8).eval()

    def sandwich(x):
        heads = q_norm(x.view(2, 3, 4, 8).transpose(1, 2))
        return post(pre(x) * heads.transpose(1, 2).reshape(2, 3, HIDDEN))

    gm = trace(sandwich, _x(torch.float32))
    assert run_pass(match_rms_norm, gm) == 3
    assert op_counts(gm)["trtllm.rms_norm"] == 3
    assert_same_outputs(gm, sandwich, _x(torch.float32))


def _rms_norm_variant(dim=-1, power=2, weight=None):
    weight = torch.randn(HIDDEN) if weight is None else weight

    def variant(x):
        h = x * torch.rsqrt(x.pow(power).mean(dim, keepdim=True) + 1e-6)
        return weight * h

    return variant


def test_rms_norm_without_casts_is_matched(trace, run_pass, op_counts, assert_same_outputs):
    # The fp32 form of the lookalikes below, unaltered: each of them differs from it in one place.
    fn = _rms_norm_variant()
    gm = trace(fn, _x(torch.float32))
    assert run_pass(match_rms_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.rms_norm": 1}
    assert_same_outputs(gm, fn, _x(torch.float32))


@pytest.mark.parametrize(
    "fn, x",
    [
        (_rms_norm_variant(dim=0), _x(torch.float32)),  # a statistic over the batch, not the features
        (_rms_norm_variant(dim=1, weight=torch.randn(1, HIDDEN)), _x(torch.float32, (2, HIDDEN, HIDDEN))),
        (_rms_norm_variant(power=3), _x(torch.float32)),
    ],
    ids=["batch_dim", "middle_dim_of_square", "cube"],
)
def test_rms_norm_lookalikes_are_left_alone(trace, run_pass, op_counts, fn, x):
    gm = trace(fn, x)
    assert run_pass(match_rms_norm, gm) == 0
    assert "trtllm.rms_norm" not in op_counts(gm) and op_counts(gm)["aten.rsqrt"] == 1


def test_norm_without_weight_is_left_alone(trace, run_pass, op_counts):
    def unweighted(x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    gm = trace(unweighted, _x(torch.float32))
    assert run_pass(match_rms_norm, gm) == 0
    assert "trtllm.rms_norm" not in op_counts(gm)


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_is_matched(trace, run_pass, op_counts, call_args, assert_same_outputs, dtype, affine):
    layer_norm = torch.nn.LayerNorm(HIDDEN, eps=1e-5, elementwise_affine=affine).to(dtype).eval()
    gm = trace(layer_norm, _x(dtype))
    assert run_pass(match_layer_norm, gm) == 1
    assert op_counts(gm) == {"trtllm.layer_norm": 1}
    (args,) = call_args(gm, torch.ops.trtllm.layer_norm.default)
    assert args["eps"] == 1e-5 and (args["weight"] is None) == (args["bias"] is None) == (not affine)
    assert_same_outputs(gm, layer_norm, _x(dtype))


def test_layer_norm_over_two_dims_is_left_alone(trace, run_pass, op_counts):
    layer_norm = torch.nn.LayerNorm((3, HIDDEN)).eval()
    gm = trace(layer_norm, _x(torch.float32))
    assert run_pass(match_layer_norm, gm) == 0
    assert op_counts(gm) == {"aten.layer_norm": 1}
