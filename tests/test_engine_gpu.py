"""The engine on the GPU (cuda target: Triton kernels, paged attention, CUDA graphs); run on the device."""

import pytest
import torch

pytestmark = pytest.mark.gpu

PROMPTS = ["The capital of France is", "Write one sentence about the sea:", "def fibonacci(n):", "1, 2, 3,"]


def test_engine_greedy_equals_hf_eager_on_gpu_with_requests_joining_mid_flight():
    from trtllm_compile import load_default_model
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.runtime.sampling import SamplingParams

    # fp32 on both sides: bf16 kernels reduce in another order than cuBLAS/HF, which can flip a greedy argmax.
    model, tokenizer = load_default_model(dtype=torch.float32, device="cuda")
    expected = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids.cuda()
        with torch.no_grad():
            expected.append(model.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist())

    llm = LLM(model, tokenizer, max_batch_size=8, max_num_tokens=512)
    engine, params, ids, results = llm.engine, SamplingParams(max_tokens=24, temperature=0.0), {}, {}
    for step in range(400):
        if step < 3 * len(PROMPTS) and step % 3 == 0:
            ids[engine.add_request(PROMPTS[step // 3], params)] = step // 3
        for output in engine.step():
            if output.finished:
                results[ids[output.request_id]] = output.token_ids
        if len(results) == len(PROMPTS):
            break
    assert [results[i] for i in range(len(PROMPTS))] == expected
    graphs = engine.runner._graphs  # keys: (rows, prefill tokens or None)
    assert any(tokens is None for _, tokens in graphs), "decode-only steps should have replayed CUDA graphs"
    assert (1, 16) in graphs, "the first prompt, prefilled alone, should have replayed the 16-token prefill graph"
    assert engine.block_manager.num_used_blocks == 0


def test_bf16_engine_agrees_with_hf_eager_on_most_greedy_tokens():
    from trtllm_compile import load_default_model
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.runtime.sampling import SamplingParams

    model, tokenizer = load_default_model(dtype=torch.bfloat16, device="cuda")
    llm = LLM(model, tokenizer, max_batch_size=8, max_num_tokens=512)
    outputs = llm.generate(PROMPTS, SamplingParams(max_tokens=16, temperature=0.0))
    first_tokens_equal = 0
    for prompt, output in zip(PROMPTS, outputs, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids.cuda()
        with torch.no_grad():
            hf = model.generate(ids, max_new_tokens=16, do_sample=False)[0, ids.shape[1] :].tolist()
        first_tokens_equal += output.token_ids[:4] == hf[:4]
    assert first_tokens_equal >= len(PROMPTS) - 1  # bf16: a near-tie may flip one prompt's continuation


def test_prompts_prefilled_alone_through_padded_graphs_give_hf_eager_tokens():
    """One prompt a step, of lengths that fall in several prefill-graph buckets (and past the largest, eager)."""
    from trtllm_compile import load_default_model
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.runtime.sampling import SamplingParams

    model, tokenizer = load_default_model(dtype=torch.float32, device="cuda")
    text = " ".join(PROMPTS * 150)
    prompts = [tokenizer(text).input_ids[:n] for n in (5, 16, 17, 40, 100, 300, 2100)]
    llm = LLM(model, tokenizer, max_batch_size=4, max_num_tokens=2200)
    assert llm.engine.runner.prefill_graph_tokens == [16, 32, 64, 128, 256, 512, 1024, 2048]
    for prompt in prompts:
        with torch.no_grad():
            expected = model.generate(torch.tensor([prompt]).cuda(), max_new_tokens=8, do_sample=False)
        output = llm.generate([prompt], SamplingParams(max_tokens=8, temperature=0.0))[0]
        assert output.token_ids == expected[0, len(prompt) :].tolist(), len(prompt)
    prefills = sorted(tokens for _, tokens in llm.engine.runner._graphs if tokens)
    assert prefills == [16, 32, 64, 128, 512]  # 5 and 16 share one; 2,100 tokens ran eagerly


def test_bf16_prefill_graph_gives_the_eager_steps_logits():
    """bf16 takes the flash varlen call, whose sequence bounds the graph captured as a device tensor."""
    from trtllm_compile import load_default_model
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.runtime.scheduler import ScheduledBatch, ScheduledSequence

    model, tokenizer = load_default_model(dtype=torch.bfloat16, device="cuda")
    runner = LLM(model, tokenizer, max_batch_size=2, max_num_tokens=512).engine.runner
    prompt = tokenizer(PROMPTS[1]).input_ids
    block = runner.block_size
    seq = ScheduledSequence(None, prompt, 0, True, list(range(block, block + len(prompt))), [1])
    graph_logits = runner.execute(ScheduledBatch([seq])).float().clone()
    assert list(runner._graphs) == [(1, 16)]
    inputs, _, _ = runner._inputs([seq], 1, runner.max_blocks_per_seq)
    with torch.no_grad():
        eager_logits = runner.step.graph_module(*inputs)[0][0].float()
    assert graph_logits.argmax() == eager_logits.argmax()
    # 16 GEMM rows against the prompt's own: bf16 sums in another order, nothing more
    assert (graph_logits - eager_logits).abs().max() <= 0.02 * eager_logits.abs().max()
