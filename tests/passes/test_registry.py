"""The pass registry: stage order, one registration per name, and run_passes' stage filter and skip list."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from trtllm_compile.passes import registry
from trtllm_compile.passes.registry import PassResult, Stage, register_pass, registered_passes, run_passes

GRAPH_PASS_STAGES = {Stage.CANONICALIZE, Stage.MATCH, Stage.FUSE}


@pytest.fixture
def empty_registry(monkeypatch):
    """A registry of its own for the test, so the real passes neither run nor see the test's."""
    monkeypatch.setattr(registry, "_PASSES", {})


def test_registered_passes_are_in_stage_order():
    specs = registered_passes()
    assert [spec.stage for spec in specs] == sorted(spec.stage for spec in specs)
    by_stage = {stage: [spec.name for spec in specs if spec.stage == stage] for stage in Stage}
    # Every pattern is traced through the no-op cleanup, so the graph must be clean before anything matches.
    assert by_stage[Stage.CANONICALIZE][0] == "remove_noops"
    assert {"canonicalize_gelu", "canonicalize_linear"} <= set(by_stage[Stage.CANONICALIZE])
    assert {"match_rms_norm", "match_layer_norm", "match_rope", "match_attention", "match_mlp"} <= set(
        by_stage[Stage.MATCH]
    )
    assert {"fuse_gemms", "fuse_add_rms_norm"} <= set(by_stage[Stage.FUSE])


def test_passes_of_one_stage_keep_registration_order(empty_registry):
    order = [("fuse_b", Stage.FUSE), ("clean", Stage.CANONICALIZE), ("fuse_a", Stage.FUSE), ("match", Stage.MATCH)]
    for name, stage in order:
        register_pass(stage, name)(lambda gm, config: 0)
    assert [spec.name for spec in registered_passes()] == ["clean", "match", "fuse_b", "fuse_a"]
    assert [spec.name for spec in registered_passes(frozenset({Stage.FUSE}))] == ["fuse_b", "fuse_a"]


def test_pass_takes_its_function_name_and_docstring(empty_registry):
    @register_pass(Stage.MATCH)
    def match_everything(gm, config):
        """Match every subgraph.

        More detail that the one-line summary leaves out.
        """
        return 0

    (spec,) = registered_passes()
    assert (spec.name, spec.stage, spec.doc) == ("match_everything", Stage.MATCH, "Match every subgraph.")


def test_a_name_registers_once():
    original = {spec.name: spec.fn for spec in registered_passes()}["remove_noops"]
    with pytest.raises(ValueError, match="'remove_noops' is registered twice"):
        register_pass(Stage.FUSE, "remove_noops")(lambda gm, config: 0)
    (spec,) = [spec for spec in registered_passes() if spec.name == "remove_noops"]
    assert spec.fn is original and spec.stage == Stage.CANONICALIZE


def test_run_passes_skips_by_name_and_filters_by_stage(empty_registry, trace):
    calls = []

    def recorder(name, rewrites):
        def run(gm, config):
            calls.append((name, config))
            return rewrites

        return run

    register_pass(Stage.CANONICALIZE, "clean")(recorder("clean", 0))
    register_pass(Stage.MATCH, "match")(recorder("match", 2))
    register_pass(Stage.FUSE, "fuse")(recorder("fuse", 1))
    register_pass(Stage.CACHE, "cache")(recorder("cache", 1))
    gm = trace(lambda x: x * 2, torch.randn(3))

    results = run_passes(gm, "config", stages=GRAPH_PASS_STAGES, skip=frozenset({"match"}))
    assert calls == [("clean", "config"), ("fuse", "config")]
    assert [(r.name, r.stage, r.num_rewrites) for r in results] == [
        ("clean", Stage.CANONICALIZE, 0),
        ("fuse", Stage.FUSE, 1),
    ]
    assert all(isinstance(r, PassResult) and r.seconds >= 0 for r in results)


def test_skipped_pass_leaves_its_work_undone(trace):
    norm = LlamaRMSNorm(8).eval()

    def norm_then_attend(x):
        q = norm(x)
        return F.scaled_dot_product_attention(q, q, q, scale=0.5)

    gm = trace(norm_then_attend, torch.randn(1, 2, 3, 8), clean=False)
    results = run_passes(gm, None, stages=GRAPH_PASS_STAGES, skip=frozenset({"match_attention"}))
    rewrites = {r.name: r.num_rewrites for r in results}
    assert "match_attention" not in rewrites and rewrites["match_rms_norm"] == 1
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert targets == {torch.ops.trtllm.rms_norm.default, torch.ops.aten.scaled_dot_product_attention.default}
