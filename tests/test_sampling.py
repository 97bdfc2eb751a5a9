"""The sampler against Hugging Face's logits processors, plus greedy, seeding and parameter validation."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from trtllm_compile.runtime.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    make_generator,
    sample,
)

VOCAB = 64
# HF divides by a Python scalar, which PyTorch may lower to a multiply by its reciprocal: one float32 ulp.
PENALTY_RTOL = 2e-7


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, VOCAB, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_greedy_equals_argmax(dtype: torch.dtype) -> None:
    logits = random_logits(8).to(dtype)
    params = [SamplingParams(temperature=0.0, top_k=k) for k in range(8)]
    assert torch.equal(sample(logits, params), logits.argmax(-1))


def test_top_k_keeps_what_hf_keeps() -> None:
    logits = random_logits(6)
    logits[0, :5] = logits[0, 5]  # ties with the k-th value are kept, as HF does
    top_ks = [3, 1, 10, VOCAB, VOCAB + 5, 5]
    ours = apply_top_k(logits, top_ks)
    for row, k in enumerate(top_ks):
        theirs = TopKLogitsWarper(top_k=k)(None, logits[row : row + 1].clone())
        assert torch.equal(ours[row : row + 1], theirs), f"row {row}, top_k={k}"
    assert torch.equal(apply_top_k(logits, [0] * 6), logits)


def test_top_p_keeps_what_hf_keeps() -> None:
    logits = random_logits(7, seed=1)
    top_ps = [0.1, 0.5, 0.9, 0.95, 0.999, 1e-6, 0.3]
    ours = apply_top_p(logits, top_ps)
    for row, p in enumerate(top_ps):
        theirs = TopPLogitsWarper(top_p=p)(None, logits[row : row + 1].clone())
        assert torch.equal(ours[row : row + 1], theirs), f"row {row}, top_p={p}"
    assert (ours[5].isfinite()).sum() == 1  # a tiny top_p still keeps the top token
    assert torch.equal(apply_top_p(logits, [1.0] * 7), logits)


@pytest.mark.parametrize("top_p", [0.25, 0.5, 0.75])
def test_top_p_boundary_matches_hf(top_p: float) -> None:
    # Uniform probabilities make the cumulative sums hit 1 - top_p exactly; HF drops that token.
    logits = torch.zeros(1, 4)
    ours = apply_top_p(logits, [top_p])
    assert torch.equal(ours, TopPLogitsWarper(top_p=top_p)(None, logits.clone()))
    assert ours.isfinite().sum() == round(top_p * 4)


def test_repetition_penalty_equals_hf() -> None:
    logits = random_logits(3, seed=2)
    prev = [[1, 5, 5, 9, 63], [0], [2, 3, 4, 200]]  # 200 is out of the output vocab and ignored
    penalties = [1.3, 0.7, 2.0]
    ours = apply_repetition_penalty(logits, penalties, prev)
    for row, penalty in enumerate(penalties):
        ids = torch.tensor([prev[row]])
        theirs = RepetitionPenaltyLogitsProcessor(penalty=penalty)(ids, logits[row : row + 1].clone())
        torch.testing.assert_close(ours[row : row + 1], theirs, rtol=PENALTY_RTOL, atol=0)
    untouched = [i for i in range(VOCAB) if i not in prev[0]]
    assert torch.equal(ours[0, untouched], logits[0, untouched])


def test_sample_matches_hf_pipeline_with_same_seed() -> None:
    logits = random_logits(4, seed=3)
    params = [
        SamplingParams(temperature=0.7, top_k=10, top_p=0.9, repetition_penalty=1.2, seed=11),
        SamplingParams(temperature=1.3, top_p=0.8, seed=12),
        SamplingParams(temperature=1.0, top_k=5, seed=13),
        SamplingParams(temperature=0.5, repetition_penalty=0.9, seed=14),
    ]
    prev = [[1, 2, 3], [4], [], [7, 7, 8]]
    for trial in range(20):
        generators = [torch.Generator().manual_seed(p.seed + trial) for p in params]
        ours = sample(logits, params, generators, prev)
        for row, p in enumerate(params):
            scores = logits[row : row + 1].clone()
            if p.repetition_penalty != 1.0:
                ids = torch.tensor([prev[row]], dtype=torch.int64)
                scores = RepetitionPenaltyLogitsProcessor(p.repetition_penalty)(ids, scores)
            scores = TemperatureLogitsWarper(p.temperature)(None, scores)
            if p.top_k:
                scores = TopKLogitsWarper(p.top_k)(None, scores)
            if p.top_p < 1.0:
                scores = TopPLogitsWarper(p.top_p)(None, scores)
            generator = torch.Generator().manual_seed(p.seed + trial)
            theirs = torch.multinomial(scores.softmax(-1), 1, generator=generator)
            assert ours[row] == theirs.item(), f"trial {trial}, row {row}"


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    logits = random_logits(1, seed=4).expand(64, VOCAB)
    params = [SamplingParams(temperature=1.0, seed=5)] * 64

    def draw(seed: int) -> torch.Tensor:
        return sample(logits, params, [torch.Generator().manual_seed(seed + i) for i in range(64)])

    assert torch.equal(draw(5), draw(5))
    assert not torch.equal(draw(5), draw(6))
    generator = make_generator(params[0])
    assert generator is not None and generator.initial_seed() == 5
    assert make_generator(SamplingParams()) is None


def test_sampled_frequencies_follow_the_filtered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]]).expand(20000, 5)
    params = [SamplingParams(temperature=2.0, top_k=3)] * 20000
    torch.manual_seed(0)
    tokens = sample(logits, params)
    assert tokens.max() <= 2  # top-k removed tokens 3 and 4
    expected = (logits[0, :3] / 2.0).softmax(-1)
    observed = torch.bincount(tokens, minlength=5)[:3].float() / 20000
    # 3 sigma of a 20000-draw frequency is below 0.011.
    torch.testing.assert_close(observed, expected, atol=0.011, rtol=0)


def test_greedy_and_sampled_rows_mix() -> None:
    logits = random_logits(4, seed=6)
    params = [SamplingParams(temperature=0.0), SamplingParams(top_k=1), SamplingParams(temperature=0.0)] * 1
    params.append(SamplingParams(temperature=0.8, top_p=1e-6))
    assert torch.equal(sample(logits, params), logits.argmax(-1))


def test_greedy_with_repetition_penalty_avoids_seen_token() -> None:
    logits = torch.tensor([[3.0, 2.9, 0.0]])
    params = [SamplingParams(temperature=0.0, repetition_penalty=1.5)]
    assert sample(logits, params, prev_tokens=[[0]]).item() == 1
    with pytest.raises(ValueError, match="prev_tokens"):
        sample(logits, params)


def test_sample_checks_row_counts() -> None:
    with pytest.raises(ValueError, match="2 logit rows"):
        sample(random_logits(2), [SamplingParams()])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"seed": -1}, "seed"),
        ({"stop": ["\n", ""]}, "stop strings"),
    ],
)
def test_invalid_params_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_default_params_are_valid_and_independent() -> None:
    first, second = SamplingParams(), SamplingParams()
    first.stop_token_ids.append(1)
    assert second.stop_token_ids == [] and not first.is_greedy
    assert SamplingParams(temperature=0.0).is_greedy


def test_a_single_stop_string_is_one_stop_string_not_its_characters() -> None:
    assert SamplingParams(stop="\n\n").stop == ["\n\n"]
