"""The paged-KV in-flight batching engine on CPU: greedy tokens equal Hugging Face generate, whatever joins
when, and every block comes back."""

import gc

import pytest
import torch
from support import TINY_MODELS, generating_model, hf_greedy, random_prompts

import trtllm_compile
from trtllm_compile.runtime.engine import EngineConfig, LLMEngine
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams

MAX_NEW = 8


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_requests_joining_mid_flight_get_hf_greedy_tokens(name):
    model = generating_model(name)
    prompts = random_prompts()
    expected = [hf_greedy(model, p, MAX_NEW) for p in prompts]
    engine = LLMEngine(model, None, EngineConfig(max_batch_size=4, max_num_tokens=64))
    params = SamplingParams(max_tokens=MAX_NEW, temperature=0.0)
    done, pending, step = {}, list(enumerate(prompts)), 0
    ids = {}
    while pending or engine.has_unfinished():
        if pending and step % 2 == 0:  # a new request every other step, while others decode
            index, prompt = pending.pop(0)
            ids[engine.add_request(prompt, params)] = index
        for output in engine.step():
            if output.finished:
                done[ids[output.request_id]] = output.token_ids
        step += 1
    assert [done[i] for i in range(len(prompts))] == expected
    assert engine.block_manager.num_used_blocks == 0


def test_waiting_and_preemption_when_blocks_run_out_keep_outputs_exact():
    model = generating_model("llama")
    prompts = random_prompts((9, 12, 7, 10))
    expected = [hf_greedy(model, p, 12) for p in prompts]
    # 6 blocks of 4 tokens cannot hold four 20-token sequences: requests wait and get preempted.
    llm = LLM(model, max_batch_size=4, max_num_tokens=24, block_size=4, num_blocks=6)
    outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0))
    assert [o.token_ids for o in outputs] == expected
    assert llm.engine.block_manager.num_used_blocks == 0


def test_hf_generate_shim_takes_a_padded_batch_and_returns_hf_layout():
    model = generating_model("qwen2")
    prompts = random_prompts((4, 10, 6))
    width = max(map(len, prompts))
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = torch.tensor(prompt)
        attention_mask[row, width - len(prompt) :] = 1
    with torch.no_grad():
        expected = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW, do_sample=False)
    compiled = trtllm_compile.compile(model, max_batch_size=4, max_num_tokens=64)
    actual = compiled.generate(input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW, do_sample=False)
    assert torch.equal(actual, expected)
    assert compiled.report.matches["attention"] == 2
    as_dict = compiled.generate(
        input_ids, attention_mask=attention_mask, max_new_tokens=MAX_NEW, return_dict_in_generate=True
    )
    assert torch.equal(as_dict.sequences, expected)
    with pytest.raises(NotImplementedError, match="output_scores"):
        compiled.generate(input_ids, max_new_tokens=2, output_scores=True, return_dict_in_generate=True)
    with pytest.raises(ValueError, match=r"\[batch, length\] tensor of token ids, got torch.float32"):
        compiled.generate(input_ids.float(), max_new_tokens=2)
    input_ids[-1, -1] = model.config.vocab_size  # the other rows are queued before this one is refused
    with pytest.raises(ValueError, match="the model's vocabulary"):
        compiled.generate(input_ids, attention_mask=attention_mask, max_new_tokens=2)
    assert not compiled.engine.has_unfinished()


def test_sampling_is_reproducible_with_a_seed_and_stops_on_stop_tokens():
    model = generating_model("llama")
    llm = LLM(model, max_batch_size=4, max_num_tokens=64)
    params = SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=20, seed=7)
    first, second = llm.generate([random_prompts()[1]] * 2, [params, params])
    assert first.token_ids == second.token_ids
    stop_at = first.token_ids[3]
    (stopped,) = llm.generate(
        [random_prompts()[1]],
        SamplingParams(max_tokens=10, temperature=0.9, top_p=0.9, top_k=20, seed=7, stop_token_ids=[stop_at]),
    )
    assert stopped.token_ids == first.token_ids[: first.token_ids.index(stop_at) + 1]
    assert stopped.finish_reason == "stop"


def test_prompt_longer_than_the_engine_allows_is_rejected_and_nothing_leaks():
    llm = LLM(generating_model("llama"), max_batch_size=2, max_num_tokens=16)
    with pytest.raises(ValueError):
        llm.generate([list(range(1, 40))], SamplingParams(max_tokens=4))
    (ok,) = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, temperature=0.0))
    assert len(ok.token_ids) == 4
    assert llm.engine.block_manager.num_used_blocks == 0


def test_a_token_id_outside_the_vocabulary_is_rejected_and_the_batch_it_came_with_leaves_nothing_behind():
    llm = LLM(generating_model("llama"), max_batch_size=4, max_num_tokens=64)
    vocab = llm.engine.vocab_size
    greedy = SamplingParams(max_tokens=4, temperature=0.0)
    for bad in (vocab, -1):
        with pytest.raises(ValueError, match=rf"in \[0, {vocab}\) \(the model's vocabulary\): \[{bad}\]"):
            llm.generate([[5, 6, 7], [8, bad]], greedy)  # the first request was queued already
        assert not llm.engine.has_unfinished() and llm.engine.block_manager.num_used_blocks == 0
    (ok,) = llm.generate([[5, 6, 7]], greedy)
    assert ok.token_ids == LLM(generating_model("llama")).generate([[5, 6, 7]], greedy)[0].token_ids


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_blocks": 0}, "num_blocks >= 1"),
        ({"num_blocks": -3}, "num_blocks >= 1"),
        ({"block_size": 0}, "block_size >= 1"),
        ({"gpu_memory_fraction": 1.5}, "in \\(0, 1\\]"),
    ],
)
def test_kv_cache_options_out_of_range_are_rejected_before_a_model_loads(options, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**options)


def test_serve_rejects_a_port_out_of_range_at_the_command_line(capsys):
    from trtllm_compile.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--port", "-5"])
    assert exited.value.code == 2 and "a port is 0-65535, not -5" in capsys.readouterr().err


def test_model_whose_attention_does_not_fuse_gets_a_clear_runtime_error():
    import transformers

    config = transformers.BloomConfig(vocab_size=256, hidden_size=64, n_layer=2, n_head=4)
    with pytest.raises(NotImplementedError, match="every attention layer fused"):
        LLM(transformers.BloomForCausalLM(config).eval())


class _ByteTokenizer:
    """Token i is byte i: a multi-byte character spans tokens, as with byte-level BPE."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def test_streamed_deltas_hold_back_half_decoded_characters():
    model = generating_model("llama")
    engine = LLMEngine(model, _ByteTokenizer(), EngineConfig(max_batch_size=2, max_num_tokens=64))
    request_id = engine.add_request([1, 2, 3], SamplingParams(max_tokens=3, temperature=0.0))
    request = engine._requests[request_id]
    deltas = []
    for token in "é!".encode():  # two bytes of é, then '!'
        request.output_token_ids.append(token)
        deltas.append(engine._output(request).new_text)
    assert deltas == ["", "é", "!"]


@pytest.mark.parametrize(
    "available, cap_bytes, expected",
    [(None, 2**30, "full"), (2**14, 2**30, "one_sequence"), (2**22, 2**30, "budget"), (2**40, 2**20, "cap")],
)
def test_cpu_kv_cache_fits_a_share_of_host_memory(monkeypatch, available, cap_bytes, expected):
    """Default CPU cache: a full batch of full-length sequences, capped at a quarter of the available host memory
    and at CPU_KV_CACHE_MAX_BYTES, and never smaller than one full-length sequence."""
    from trtllm_compile.runtime import model_runner

    monkeypatch.setattr(model_runner, "available_host_memory", lambda: available)
    monkeypatch.setattr(model_runner, "CPU_KV_CACHE_MAX_BYTES", cap_bytes)
    runner = LLM(generating_model("llama"), max_batch_size=64, max_num_tokens=128).engine.runner
    per_block = runner.kv_cache[:, :, :1].numel() * runner.kv_cache.element_size()
    full, one_sequence, cap = 64 * runner.max_blocks_per_seq, runner.max_blocks_per_seq, cap_bytes // per_block
    budget = int((available or 0) * model_runner.CPU_KV_CACHE_FRACTION) // per_block
    assert one_sequence < budget < full or expected != "budget"  # each case tests what it says
    assert one_sequence < cap < min(full, budget) or expected != "cap"
    assert full < cap or expected != "full"
    assert runner.num_blocks == {"full": full, "one_sequence": one_sequence, "budget": budget, "cap": cap}[expected]


def test_overlap_scheduling_gives_the_tokens_of_reading_every_step_back():
    """Step n+1 launched before step n is read back: same outputs for greedy, seeded sampling, repetition
    penalty, stop tokens and stop strings, with requests joining mid-flight; decodes really took their input
    tokens from the device (PENDING)."""
    model = generating_model("llama")
    prompts = random_prompts((9, 12, 7))
    prompts += [prompts[0], prompts[0]]  # stopped by a token / a string of the first one's greedy output
    greedy = hf_greedy(model, prompts[0], 10)
    params = [
        SamplingParams(max_tokens=10, temperature=0.0),
        SamplingParams(max_tokens=7, temperature=0.8, top_k=30, seed=3),
        SamplingParams(max_tokens=9, temperature=0.0, repetition_penalty=1.3),
        SamplingParams(max_tokens=10, temperature=0.0, stop_token_ids=[greedy[4]]),
        SamplingParams(max_tokens=10, temperature=0.0, stop=[bytes(greedy[2:4]).decode("utf-8", "replace")]),
    ]
    results = {}
    for overlap in (False, True):
        # 12 blocks of 4 tokens for three sequences of up to 22: some wait or are preempted
        config = EngineConfig(max_batch_size=3, max_num_tokens=24, block_size=4, num_blocks=12)
        config.overlap_scheduling = overlap
        engine = LLMEngine(model, _ByteTokenizer(), config)
        fed_pending = []

        def execute(batch, pending=None, run=engine.runner.execute, fed=fed_pending):
            fed.append(pending is not None)
            return run(batch, pending)

        engine.runner.execute = execute
        done, ids, queue = {}, {}, list(enumerate(zip(prompts, params, strict=True)))
        while queue or engine.has_unfinished():
            if queue:  # one joins every step
                index, (prompt, p) = queue.pop(0)
                ids[engine.add_request(prompt, p)] = index
            for output in engine.step():
                if output.finished:
                    done[ids[output.request_id]] = (output.token_ids, output.text, output.finish_reason)
        assert engine.block_manager.num_used_blocks == 0
        assert any(fed_pending) == overlap
        results[overlap] = [done[i] for i in range(len(prompts))]
    assert results[True] == results[False]
    assert results[True][0][0] == greedy
    assert [r[2] for r in results[True]] == ["length", "length", "length", "stop", "stop"]


def test_decode_batches_get_a_cuda_graph_padded_to_a_multiple_of_16_and_the_max_batch():
    from trtllm_compile.runtime.model_runner import cuda_graph_sizes

    assert cuda_graph_sizes(1) == [1]
    assert cuda_graph_sizes(12) == [1, 2, 4, 8, 12]
    sizes = cuda_graph_sizes(414)
    assert sizes[:6] == [1, 2, 4, 8, 16, 32] and sizes[-3:] == [384, 400, 414]
    assert all(b - a <= 16 for a, b in zip(sizes, sizes[1:], strict=False))  # at most 15 padding rows past 8


@pytest.mark.parametrize("name", ["llama", "mistral", "gemma3"])
def test_a_prompt_padded_to_its_prefill_graph_bucket_gives_the_logits_and_cache_of_the_prompt_alone(name):
    """What a prefill graph replays, run eagerly on CPU: the pads after the prompt change neither its last token's
    logits nor its cached K/V (sliding windows included); they write to the spare block only."""
    from trtllm_compile.runtime.scheduler import ScheduledSequence

    runner = LLM(generating_model(name), max_batch_size=2, max_num_tokens=64).engine.runner
    prompt = random_prompts((11,))[0]
    block = runner.block_size
    seq = ScheduledSequence(None, prompt, 0, True, list(range(block, block + len(prompt))), [1])

    unwritten = 7.0  # what the cache holds before the step: a pad's K/V may be zeros (Gemma embeds token 0 so)

    def prefill(**padding):
        runner.kv_cache.fill_(unwritten)
        inputs, _, _ = runner._inputs([seq], 1, runner.max_blocks_per_seq, **padding)
        with torch.no_grad():
            return runner.step.graph_module(*inputs)[0][0], runner.kv_cache.clone()

    alone, cache_alone = prefill()
    padded, cache_padded = prefill(prefill_tokens=16)
    spare = runner.num_blocks
    torch.testing.assert_close(padded, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache_padded[:, :, :spare], cache_alone[:, :, :spare], rtol=1e-5, atol=1e-5)
    written = cache_alone != unwritten
    assert written[:, :, 1, : len(prompt)].all() and not written[:, :, 1, len(prompt) :].any()  # the prompt's slots
    assert (cache_padded[:, :, spare] != unwritten).any() and not written[:, :, spare].any()  # the pads' block

    runner.use_cuda_graphs = True  # which bucket a step would replay (CPU steps never do)
    assert runner.prefill_graph_tokens == [16, 32, 64]  # up to max_num_tokens
    assert runner._prefill_bucket([seq]) == 16
    assert runner._prefill_bucket([seq, seq]) is None  # two prompts: eager
    assert runner._prefill_bucket([ScheduledSequence(None, [1] * 65, 0, True, [], [])]) is None


def test_step_inputs_travel_in_one_aligned_buffer_that_a_cuda_graph_refills():
    import numpy as np

    from trtllm_compile.runtime.model_runner import _copy_packed

    arrays = (np.arange(3, dtype=np.int64), np.arange(10, dtype=np.int32).reshape(2, 5), np.zeros((2, 0), np.int64))
    buffer, views = _copy_packed(arrays, torch.device("cpu"))
    assert buffer.dtype == torch.uint8 and buffer.numel() == 32 + 48  # 24 and 40 bytes, each rounded up to 16s
    for view, array in zip(views, arrays, strict=True):
        assert view.data_ptr() % 16 == 0 and torch.equal(view, torch.from_numpy(array))
    refilled = (arrays[0] + 7, arrays[1] * 2, arrays[2])
    same_buffer, new_views = _copy_packed(refilled, torch.device("cpu"), into=buffer)
    assert same_buffer is buffer and torch.equal(views[1], torch.from_numpy(refilled[1]))  # the old views see it
    with pytest.raises(ValueError, match="take 80 bytes, but the buffer given holds 24"):
        _copy_packed(arrays, torch.device("cpu"), into=buffer[:24])


def test_steps_run_with_the_heap_frozen_from_collection(monkeypatch):
    """A full collection walks every object torch and the model made (0.4-0.7 s at max load, run 86): during a
    step the objects from before it are frozen, and after it they are collected as before."""
    llm = LLM(generating_model("llama"), max_batch_size=2, max_num_tokens=64)
    runner, frozen_during_steps = llm.engine.runner, []
    execute = runner.execute

    def recording_execute(*args, **kwargs):
        frozen_during_steps.append(gc.get_freeze_count())
        return execute(*args, **kwargs)

    monkeypatch.setattr(runner, "execute", recording_execute)
    gc.unfreeze()
    prompt = random_prompts((5,))[0]
    assert llm.generate([prompt], SamplingParams(max_tokens=3, temperature=0.0))[0].token_ids
    assert len(frozen_during_steps) >= 3 and min(frozen_during_steps) > 1000
    assert gc.get_freeze_count() == 0
