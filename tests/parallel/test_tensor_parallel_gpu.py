"""Tensor parallelism on two GPUs (NCCL, CUDA graphs for decode): the greedy tokens of one GPU, fp32."""

from __future__ import annotations

import copy

import pytest
import torch
from support import generating_model, random_prompts
from test_tensor_parallel_llm import GREEDY

from trtllm_compile.config import CompileConfig
from trtllm_compile.parallel.peer_all_reduce import rendezvous_made
from trtllm_compile.runtime.llm import LLM

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]


@pytest.mark.parametrize(("name", "overrides"), [("llama", {}), ("qwen2", {"num_key_value_heads": 1})])
def test_tp2_on_two_gpus_gives_the_one_gpu_greedy_tokens(name, overrides):
    model = generating_model(name, **overrides)  # on the CPU: each rank moves its own shard to its GPU
    prompts = random_prompts()
    config = dict(max_batch_size=8, max_num_tokens=128)
    expected = LLM(copy.deepcopy(model).to("cuda:0"), **config).generate(prompts, GREEDY)
    first_group = rendezvous_made() == 0  # later groups of this process keep all-reduces on NCCL
    with LLM(model, tensor_parallel_size=2, device="cuda", **config) as llm:
        runner = llm.engine.runner
        actual = llm.generate(prompts, GREEDY)
        assert runner.use_cuda_graphs and runner._graphs  # decode steps replayed captured graphs
        assert (runner.peer_all_reduce is not None) == first_group  # fp32 is taken by the one-shot kernel
        assert runner.kv_cache.device == torch.device("cuda", 0)
    assert [o.token_ids for o in actual] == [o.token_ids for o in expected]


def test_tp_invariant_tp2_on_two_gpus_gives_the_one_gpu_bf16_greedy_tokens():
    """bf16 with random weights: flat logits, where one last bit moves an argmax; tp_invariant=2 keeps them all."""
    model = generating_model("llama", hidden_size=1024, intermediate_size=2816, num_attention_heads=8).bfloat16()
    prompts = random_prompts()
    config = dict(max_batch_size=8, max_num_tokens=128, compile=CompileConfig(tp_invariant=2))
    expected = LLM(copy.deepcopy(model).to("cuda:0"), **config).generate(prompts, GREEDY)
    with LLM(model, tensor_parallel_size=2, device="cuda", **config) as llm:
        actual = llm.generate(prompts, GREEDY)
        assert llm.engine.runner.use_cuda_graphs and llm.engine.runner._graphs
    assert [o.token_ids for o in actual] == [o.token_ids for o in expected]
