"""torch.compile(model, backend="trtllm") on every supported architecture: logits match eager and every
decoder layer's attention, RoPE, MLP and norms are fused."""

import subprocess
import sys

import pytest
import torch
from support import FP32_REL_TOL, TINY_MODELS, rel_err

import trtllm_compile


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_compiled_logits_match_eager_and_every_layer_fuses(name, attn_implementation):
    spec = TINY_MODELS[name]
    model = spec.build(attn_implementation)
    input_ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :3] = 0  # left padding in the first row
    with torch.no_grad():
        expected = model(input_ids, attention_mask=attention_mask).logits

    compiled = trtllm_compile.compile(model)
    actual = compiled(input_ids, attention_mask=attention_mask).logits

    valid = attention_mask.bool()  # padded positions' logits are not meaningful in either run
    assert rel_err(actual[valid], expected[valid]) <= FP32_REL_TOL
    report = compiled.report
    assert report.num_graphs == 1
    assert report.matches == spec.expected_matches()
    assert [f for f in report.fallbacks if f.family in ("attention", "mlp", "norm", "rope")] == []


def test_backend_is_registered_by_entry_point_without_import():
    code = "import torch, sys; sys.exit(0 if 'trtllm' in torch._dynamo.list_backends() else 1)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_torch_compile_by_name_runs_fused_graph():
    model = TINY_MODELS["llama"].build()
    input_ids = torch.randint(0, 256, (1, 5))
    with torch.no_grad():
        expected = model(input_ids).logits
        actual = torch.compile(model, backend="trtllm")(input_ids).logits
    assert rel_err(actual, expected) <= FP32_REL_TOL
    assert trtllm_compile.last_report().matches == TINY_MODELS["llama"].expected_matches()


def test_unknown_option_names_the_valid_ones():
    model = TINY_MODELS["llama"].build()
    with pytest.raises(Exception, match="valid options are"):
        torch.compile(model, backend="trtllm", options={"fuse_everything": True})(torch.randint(0, 256, (1, 5)))


def test_disabled_pass_is_skipped_and_reported():
    model = TINY_MODELS["llama"].build()
    compiled = trtllm_compile.compile(model, disable_passes=["match_attention"])
    compiled(torch.randint(0, 256, (1, 5)))
    report = compiled.report
    assert report.matches["attention"] == 0
    assert {f.family for f in report.fallbacks} == {"attention"}
    assert "match_attention" not in {p.name for p in report.passes}


def test_unknown_disabled_pass_names_the_registered_ones():
    model = TINY_MODELS["llama"].build()
    compiled = trtllm_compile.compile(model, disable_passes=["match_atention"])
    with pytest.raises(Exception, match=r"unknown pass\(es\) \['match_atention'\].*match_attention"):
        compiled(torch.randint(0, 256, (1, 5)))
