"""The one-shot all-reduce kernel (kernels/all_reduce.py), with and without the residual add + RMSNorm it can
end in.

On CPU, Triton's interpreter runs one program at a time, so two ranks cannot wait for each other: the test plays
rank 1 first with rank 0's flag raised by hand (its sum is not checked: rank 0's row is not there yet), then
rank 0, whose wait is met by rank 1's real flag and whose sum reads rank 1's real slot. That checks the
buffer layout, the flag and slot arithmetic over calls, and the math; the cross-GPU ordering itself is
checked on two GPUs in tests/parallel/test_peer_all_reduce.py.
"""

from __future__ import annotations

import pytest
import torch

import trtllm_compile.ops  # noqa: F401  (registers torch.ops.trtllm)

ROW_WIDTH, MAX_ROWS, EPS = 64, 4, 1e-6


def _two_ranks(all_reduce, dtype):
    buffers = [torch.zeros(all_reduce.buffer_bytes(dtype, ROW_WIDTH, MAX_ROWS), dtype=torch.uint8) for _ in "01"]
    ptrs = [b.data_ptr() for b in buffers]
    ranks = [all_reduce.OneShotRows(ptrs, r, dtype, ROW_WIDTH, MAX_ROWS, "cpu") for r in range(2)]
    flags = buffers[1][: all_reduce.FLAG_BYTES].view(torch.int32).view(all_reduce.MAX_ROWS, all_reduce.MAX_WORLD)
    return buffers, ranks, flags


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_shot_sums_and_norms_over_calls(interpreted, assert_matches, reference, dtype):
    all_reduce = interpreted("all_reduce")
    buffers, ranks, rank1_flags = _two_ranks(all_reduce, dtype)
    gen = torch.Generator().manual_seed(0)
    weight = 1 + 0.1 * torch.randn(48, generator=gen)
    for call, rows in enumerate([3, 3, 1, 4], start=1):  # rows 0-2 alternate slots, row 3 starts later
        xs = [torch.randn(rows, 48, generator=gen).to(dtype) for _ in "01"]
        residual = torch.randn(rows, 48, generator=gen).to(dtype)
        expected_sum = (xs[0].float() + xs[1].float()).to(dtype)  # one rounding of the fp32 sum, as NCCL's
        rank1_flags[:rows, 0] = ranks[0].counters[:rows] + 1  # "rank 0 has stored its rows"
        fused = call % 2 == 0
        if fused:
            ranks[1].all_reduce_add_rms_norm(xs[1], residual, weight.to(dtype), EPS)
            out, summed = ranks[0].all_reduce_add_rms_norm(xs[0], residual, weight.to(dtype), EPS)
            ref_out, ref_summed = reference(
                torch.ops.trtllm.add_rms_norm, expected_sum, residual, weight.to(dtype), EPS
            )
            assert_matches(summed, ref_summed)
            assert_matches(out, ref_out)
        else:
            ranks[1].all_reduce(xs[1])
            got = ranks[0].all_reduce(xs[0])
            if dtype == torch.float32:
                assert torch.equal(got, expected_sum)
            else:
                assert_matches(got, expected_sum)
        assert torch.equal(ranks[1].counters, ranks[0].counters)
    # Calls per row; row 0's fourth call went to slot 0 (the even one).
    assert ranks[0].counters[:5].tolist() == [4, 3, 3, 1, 0]
    rank1_slot0 = buffers[1][all_reduce.FLAG_BYTES :].view(dtype)[:ROW_WIDTH]
    assert torch.equal(rank1_slot0[:48], xs[1][0])


def test_one_shot_rounds_fp32_partial_sums_to_the_models_dtype(interpreted, assert_matches, reference):
    """What a widened graph (passes/widen_partial_sums.py) asks: sum fp32 partials, round once to bf16."""
    all_reduce = interpreted("all_reduce")
    _, ranks, rank1_flags = _two_ranks(all_reduce, torch.float32)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, 48, generator=gen) for _ in "01"]
    residual, weight = torch.randn(2, 48, generator=gen).bfloat16(), torch.ones(48, dtype=torch.bfloat16)
    expected_sum = (xs[0] + xs[1]).bfloat16()
    for call, fused in ((1, False), (2, True)):
        rank1_flags[:2, 0] = call
        if fused:
            ranks[1].all_reduce_add_rms_norm(xs[1], residual, weight, EPS, dtype=torch.bfloat16)
            out, summed = ranks[0].all_reduce_add_rms_norm(xs[0], residual, weight, EPS, dtype=torch.bfloat16)
            ref_out, ref_summed = reference(torch.ops.trtllm.add_rms_norm, expected_sum, residual, weight, EPS)
            assert summed.dtype == torch.bfloat16
            assert_matches(summed, ref_summed)
            assert_matches(out, ref_out)
        else:
            ranks[1].all_reduce(xs[1], torch.bfloat16)
            assert_matches(ranks[0].all_reduce(xs[0], torch.bfloat16), expected_sum)


def test_one_shot_takes_only_what_fits(interpreted):
    all_reduce = interpreted("all_reduce")
    _, (rank0, _), _ = _two_ranks(all_reduce, torch.float32)
    assert rank0.takes(torch.ones(MAX_ROWS, ROW_WIDTH))
    assert rank0.takes(torch.ones(2, 1, 48))  # rows are the last dim, narrower than the slot is fine
    assert not rank0.takes(torch.ones(MAX_ROWS + 1, ROW_WIDTH))
    assert not rank0.takes(torch.ones(1, ROW_WIDTH + 1))
    assert not rank0.takes(torch.ones(2, ROW_WIDTH, dtype=torch.float16))
    assert not rank0.takes(torch.ones(ROW_WIDTH, 2).t())
    with pytest.raises(ValueError, match="2 to 8 ranks"):
        all_reduce.OneShotRows([0], 0, torch.float32, ROW_WIDTH, MAX_ROWS, "cpu")
