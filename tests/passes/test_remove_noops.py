"""remove_noops: inference no-ops disappear, real work stays, negative dims are normalized."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trtllm_compile.fx_utils import op_name
from trtllm_compile.passes.remove_noops import remove_noops

X = torch.randn(2, 3, 8)

# name -> (function of X with one no-op around a real op, the no-op's ATen op, nodes the pass removes)
NOOPS = {
    "same_dtype_to": (lambda x: x.to(torch.float32) * 2, "aten.to", 1),
    "float": (lambda x: x.float() * 2, "aten.to", 1),
    "type_as": (lambda x: x.type_as(x) * 2, "aten.type_as", 1),
    "alias": (lambda x: torch.ops.aten.alias(x) * 2, "aten.alias", 1),
    "detach": (lambda x: x.detach() * 2, "aten.detach", 1),
    "eval_dropout": (lambda x: F.dropout(x, 0.1, training=False) * 2, "aten.dropout", 1),
    "zero_dropout": (lambda x: F.dropout(x, 0.0, training=True) * 2, "aten.dropout", 1),
    "full_slice": (lambda x: x[:, :3] * 2, "aten.alias", 1),  # pre-dispatch traces it as an alias
    "same_shape_view": (lambda x: x.view(2, 3, 8) * 2, "aten.view", 1),
    "same_shape_reshape": (lambda x: x.reshape(2, 3, -1) * 2, "aten.reshape", 1),
    "same_shape_expand": (lambda x: x.expand(2, 3, 8) * 2, "aten.expand", 1),
}

# name -> function whose cast, dropout, slice or view does real work and must stay.
REAL_WORK = {
    "narrowing_cast": (lambda x: x.to(torch.bfloat16) * 2, "aten.to"),
    "training_dropout": (lambda x: F.dropout(x, 0.1, training=True) * 2, "aten.dropout"),
    "strided_slice": (lambda x: x[..., ::2] * 2, "aten.slice"),
    "partial_slice": (lambda x: x[..., 1:] * 2, "aten.slice"),
    "reshaping_view": (lambda x: x.view(6, 8) * 2, "aten.view"),
}


@pytest.mark.parametrize("name", list(NOOPS))
def test_noop_is_removed(trace, run_pass, op_counts, assert_same_outputs, name):
    fn, op, removed = NOOPS[name]
    gm = trace(fn, X, clean=False)
    assert op_counts(gm)[op] == 1
    assert run_pass(remove_noops, gm) == removed
    assert op_counts(gm) == {"aten.mul": 1}
    assert_same_outputs(gm, fn, X)


def test_products_and_quotients_by_one_go_unless_they_cast(trace, run_pass, op_counts, assert_same_outputs):
    def fn(x, positions):
        return (x * 1.0).exp() / 1 + positions * 1.0  # int * 1.0 is a cast to float: it stays

    positions = torch.arange(8)
    gm = trace(fn, X, positions, clean=False)
    assert op_counts(gm)["aten.mul"] == 2 and op_counts(gm)["aten.div"] == 1
    assert run_pass(remove_noops, gm) == 2
    assert op_counts(gm)["aten.mul"] == 1 and op_counts(gm)["aten.div"] == 0
    assert_same_outputs(gm, fn, X, positions)


@pytest.mark.parametrize("name", list(REAL_WORK))
def test_real_work_stays(trace, run_pass, op_counts, name):
    fn, op = REAL_WORK[name]
    gm = trace(fn, X, clean=False)
    assert run_pass(remove_noops, gm) == 0
    assert op_counts(gm) == {op: 1, "aten.mul": 1}
    if name != "training_dropout":
        torch.testing.assert_close(gm(X), fn(X), atol=0, rtol=0)


def test_low_precision_graph_keeps_its_casts(trace, run_pass, op_counts):
    # An RMSNorm's upcast and downcast are no-ops in fp32 and real in bf16: each graph keeps its own form.
    def upcast_and_back(x):
        return (x.to(torch.float32) * 2).to(x.dtype)

    fp32 = trace(upcast_and_back, X, clean=False)
    assert run_pass(remove_noops, fp32) == 2 and op_counts(fp32) == {"aten.mul": 1}
    bf16 = trace(upcast_and_back, X.bfloat16(), clean=False)
    assert run_pass(remove_noops, bf16) == 0 and op_counts(bf16) == {"aten.to": 2, "aten.mul": 1}


def test_concatenation_with_an_empty_cache_is_the_new_entry(trace, run_pass, op_counts, assert_same_outputs):
    empty = torch.empty(2, 0, 8)

    def append_to_empty_cache(x):
        return torch.cat([empty, x], dim=1) * 2

    gm = trace(append_to_empty_cache, X, clean=False)
    assert run_pass(remove_noops, gm) == 1
    assert op_counts(gm) == {"aten.mul": 1}
    assert_same_outputs(gm, append_to_empty_cache, X)


def test_concatenation_drops_only_its_empty_inputs(trace, run_pass, op_counts, assert_same_outputs):
    empty = torch.empty(2, 0, 8)

    def cat_three(x):
        return torch.cat([empty, x, x], dim=1)

    gm = trace(cat_three, X, clean=False)
    assert run_pass(remove_noops, gm) == 1
    (cat,) = [n for n in gm.graph.nodes if n.op == "call_function"]
    assert len(cat.args[0]) == 2
    assert_same_outputs(gm, cat_three, X)


def test_grad_mode_markers_are_removed(trace, run_pass, op_counts, assert_same_outputs):
    def with_grad_toggles(x):
        with torch.enable_grad():
            y = x * 2
        with torch.no_grad():
            return y + 1

    gm = trace(with_grad_toggles, X, clean=False)
    markers = op_counts(gm)["_set_grad_enabled"]
    assert markers > 0
    assert run_pass(remove_noops, gm) == markers
    assert op_counts(gm) == {"aten.mul": 1, "aten.add": 1}
    assert_same_outputs(gm, with_grad_toggles, X)


def test_autocast_markers_are_removed_in_pairs(trace, run_pass, op_counts):
    def disable_autocast(x):  # Hugging Face rotary embeddings compute their tables like this
        with torch.autocast("cpu", enabled=False):
            return x * 2

    gm = trace(disable_autocast, X, clean=False)
    run_pass(remove_noops, gm)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gm(X)
        still_enabled = torch.is_autocast_enabled("cpu")
    assert still_enabled
    assert op_counts(gm) == {"aten.mul": 1}


# (function, op, its dim arguments after normalization) for x of rank 3 (and rank 4 where noted).
NEGATIVE_DIMS = {
    "transpose": (lambda x: x.transpose(-1, -2) * 2, "aten.transpose", (1, 2)),
    "transpose_sorted": (lambda x: x.transpose(2, 0) * 2, "aten.transpose", (0, 2)),
    "softmax": (lambda x: torch.softmax(x, -1) * 2, "aten.softmax", (2,)),
    "slice": (lambda x: x[..., :4] * 2, "aten.slice", (2,)),
    "mean": (lambda x: x.mean(-1, keepdim=True) * 2, "aten.mean", ([2],)),
    "unsqueeze": (lambda x: x.unsqueeze(-1) * 2, "aten.unsqueeze", (3,)),
    "split": (lambda x: torch.split(x, [3, 5], dim=-1)[1] * 2, "aten.split_with_sizes", (2,)),
}
DIM_POSITIONS = {
    "aten.transpose": (1, 2),
    "aten.softmax": (1,),
    "aten.slice": (1,),
    "aten.mean": (1,),
    "aten.unsqueeze": (1,),
    "aten.split_with_sizes": (2,),
}


@pytest.mark.parametrize("name", list(NEGATIVE_DIMS))
def test_negative_dims_are_normalized(trace, run_pass, assert_same_outputs, name):
    fn, op, dims = NEGATIVE_DIMS[name]
    gm = trace(fn, X, clean=False)
    run_pass(remove_noops, gm)
    (node,) = [n for n in gm.graph.nodes if n.op == "call_function" and op_name(n) == op]
    assert tuple(node.args[i] for i in DIM_POSITIONS[op]) == dims
    assert_same_outputs(gm, fn, X)
