"""The embedded default model, SmolLM2-135M-Instruct, with its real weights."""

import copy

import pytest
import torch
from support import FP32_REL_TOL, rel_err

import trtllm_compile

PROMPTS = [
    "The capital of France is",
    "Write one sentence about the sea:",
    "def fibonacci(n):",
    "1, 2, 3,",
]


def _expected_matches(config) -> dict[str, int]:
    layers = config.num_hidden_layers
    return {"attention": layers, "rope": 2 * layers, "mlp": layers, "norm": 2 * layers + 1}


@pytest.mark.slow
def test_logits_match_eager_and_every_layer_fuses(smollm2):
    model, tokenizer = smollm2
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
    report = trtllm_compile.explain(model, **batch)
    compiled = trtllm_compile.compile(copy.deepcopy(model))
    actual = compiled(**batch).logits

    valid = batch["attention_mask"].bool()
    assert rel_err(actual[valid], expected[valid]) <= FP32_REL_TOL
    assert report.matches == _expected_matches(model.config)
    assert report.fallbacks == []


@pytest.mark.slow
def test_generate_through_torch_compile_gives_eager_greedy_tokens(smollm2):
    model, tokenizer = smollm2
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)  # a padded batch
    single = tokenizer(PROMPTS[0], return_tensors="pt")
    with torch.no_grad():
        expected_batch = model.generate(**batch, max_new_tokens=10, do_sample=False)
        expected_single = model.generate(**single, max_new_tokens=10, do_sample=False)

    compiled = copy.deepcopy(model)
    compiled.compile(backend="trtllm")  # torch.compile in place, so generate() calls the compiled forward
    with torch.no_grad():
        actual_batch = compiled.generate(**batch, max_new_tokens=10, do_sample=False)
        actual_single = compiled.generate(**single, max_new_tokens=10, do_sample=False)

    assert torch.equal(actual_batch, expected_batch)
    assert torch.equal(actual_single, expected_single)
    # The compiled graphs really ran: the decode step's report comes from our backend, fully fused.
    assert trtllm_compile.last_report().matches == _expected_matches(model.config)


@pytest.mark.slow
def test_engine_greedy_equals_hf_with_requests_joining_mid_flight(smollm2):
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.runtime.sampling import SamplingParams

    model, tokenizer = smollm2
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=12, do_sample=False)
        expected.append(out[0, ids.shape[1] :].tolist())

    llm = LLM(model, tokenizer, max_batch_size=4, max_num_tokens=256)
    params = SamplingParams(max_tokens=12, temperature=0.0)
    engine, results, ids = llm.engine, {}, {}
    for step in range(200):
        if step < len(PROMPTS) * 3 and step % 3 == 0:  # join every third step while others decode
            ids[engine.add_request(PROMPTS[step // 3], params)] = step // 3
        for output in engine.step():
            if output.finished:
                results[ids[output.request_id]] = output
        if len(results) == len(PROMPTS):
            break
    for index, tokens in enumerate(expected):
        assert results[index].token_ids == tokens  # both stop at EOS or after 12 tokens
        assert results[index].text == tokenizer.decode(results[index].token_ids, skip_special_tokens=True)
    assert engine.block_manager.num_used_blocks == 0

    streamed = list(llm.generate_stream(PROMPTS[0], params))
    assert "".join(o.new_text for o in streamed) == results[0].text
    assert streamed[-1].finished


@pytest.mark.slow
def test_the_main_job_answers_as_eager_does_and_reports_no_fallback(capsys):
    """README's first command: `trtllm-compile run "The capital of France is"` on the embedded default model."""
    from trtllm_compile.cli import main

    assert main(["run", "The capital of France is", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(" Paris.") and "greedy tokens identical to eager: yes" in out
    assert "fused: attention 30, rope 60, mlp 30, norm 61" in out and "fallbacks: none" in out


def test_the_main_job_refuses_a_prompt_past_the_model_context_before_generating(capsys):
    from trtllm_compile.cli import main

    assert main(["run", "word " * 9000, "--max-new-tokens", "4"]) == 2
    assert "the prompt (9001 tokens) and --max-new-tokens 4 need 9005 positions, the model has 8192" in (
        capsys.readouterr().err
    )
