"""LLM with tensor_parallel_size=2 on CPU (gloo), spawned or launched by torchrun: exactly the greedy tokens of
one device, whatever joins when, with preemption, and every block comes back. Overlap scheduling is on (the
default): the other rank feeds PENDING inputs from the tokens rank 0 broadcasts after sampling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from support import generating_model, hf_greedy, random_prompts

from trtllm_compile.parallel.launch import free_port, start_group
from trtllm_compile.parallel.runner import pack_batch, unpack_batch
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.model_runner import PendingTokens
from trtllm_compile.runtime.sampling import SamplingParams
from trtllm_compile.runtime.scheduler import PENDING, ScheduledBatch, ScheduledSequence

MAX_NEW = 8
GREEDY = SamplingParams(max_tokens=MAX_NEW, temperature=0.0)


@pytest.mark.slow
def test_tp2_gives_the_tp1_greedy_tokens_on_smollm2_real_weights(smollm2):
    model, tokenizer = smollm2  # 9 query heads, 3 KV heads: whole GQA groups, 2 on rank 0 and 1 on rank 1
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
    params = SamplingParams(max_tokens=16, temperature=0.0)
    config = dict(max_batch_size=4, max_num_tokens=128)
    expected = LLM(model, tokenizer, **config).generate(prompts, params)
    # No module given: every rank loads the embedded model's folder itself.
    with LLM(None, tensor_parallel_size=2, device="cpu", **config) as llm:
        assert llm.engine.runner.step.geometry.num_kv_heads == 2
        actual = llm.generate(prompts, params)
    assert [o.token_ids for o in actual] == [o.token_ids for o in expected]
    assert [o.text for o in actual] == [o.text for o in expected]


def test_tp2_requests_joining_mid_flight_on_one_kv_head_with_bias():
    model = generating_model("qwen2", num_key_value_heads=1, max_position_embeddings=256)  # q/k/v biases; 1 KV head
    prompts = random_prompts((120, 140, 130, 135, 3, 9, 5, 12, 1, 7))
    expected = [hf_greedy(model, p, MAX_NEW) for p in prompts]
    config = dict(max_batch_size=8, max_num_tokens=640)
    with LLM(model, tensor_parallel_size=2, device="cpu", **config) as llm:
        # The four long prompts start together (a step whose batch needs a second control message), then a
        # short request joins every other step while the others decode.
        arrivals = {0: [0, 1, 2, 3], **{2 * (i - 3): [i] for i in range(4, len(prompts))}}
        engine, done, ids, step = llm.engine, {}, {}, 0
        while step <= max(arrivals) or engine.has_unfinished():
            for index in arrivals.get(step, []):
                ids[engine.add_request(prompts[index], GREEDY)] = index
            for output in engine.step():
                if output.finished:
                    done[ids[output.request_id]] = output.token_ids
            step += 1
        assert engine.block_manager.num_used_blocks == 0
    assert [done[i] for i in range(len(prompts))] == expected


def test_tp2_waiting_and_preemption_keep_outputs_exact():
    model = generating_model("llama")  # 4 heads, 2 KV heads: one of each group per rank
    prompts = random_prompts((9, 12, 7, 10))
    expected = [hf_greedy(model, p, 12) for p in prompts]
    # 6 blocks of 4 tokens cannot hold four 20-token sequences: requests wait and get preempted.
    config = dict(max_batch_size=4, max_num_tokens=24, block_size=4, num_blocks=6)
    with LLM(model, tensor_parallel_size=2, device="cpu", **config) as llm:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=12, temperature=0.0))
        assert llm.engine.block_manager.num_used_blocks == 0
    assert [o.token_ids for o in outputs] == expected


class _FailsOnRank1:
    """A model factory that fails in the spawned rank, as a missing checkpoint there would."""

    def __call__(self):
        if dist.is_initialized() and dist.get_rank() == 1:
            raise RuntimeError("no such checkpoint")
        return generating_model("llama")


def test_a_rank_that_fails_to_start_is_reported_not_waited_for():
    with pytest.raises(RuntimeError, match=r"rank 1 failed while starting(?s:.*)no such checkpoint"):
        LLM(_FailsOnRank1(), tensor_parallel_size=2, device="cpu", max_batch_size=2, max_num_tokens=32)
    assert not dist.is_initialized()  # rank 0 left the group: a later one can start


def test_more_ranks_than_gpus_names_the_fix_before_starting_any(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"tensor_parallel_size=2 needs 2 GPUs .* it has 1; use a smaller"):
        start_group(generating_model("llama"), 2, {}, device_type="cuda")
    assert not dist.is_initialized()


def test_a_batch_packs_into_one_tensor_and_back():
    """With the row of each PENDING input in the previous step's samples (overlap scheduling)."""
    sequences = [
        ScheduledSequence(None, [5, 6, 7], 0, True, [0, 1, 2], [0]),
        ScheduledSequence(None, [9], 17, False, [33], [1, 2]),
        ScheduledSequence(None, [PENDING], 4, False, [4], [3]),
    ]
    pending = PendingTokens(torch.tensor([11, 12]), [-1, -1, 1])
    unpacked, rows = unpack_batch(pack_batch(ScheduledBatch(sequences), pending))
    assert [(s.token_ids, s.start_pos, s.is_prefill, s.slot_mapping, s.block_table) for s in unpacked] == [
        (s.token_ids, s.start_pos, s.is_prefill, s.slot_mapping, s.block_table) for s in sequences
    ]
    assert rows == [-1, -1, 1]
    assert unpack_batch(pack_batch(ScheduledBatch(sequences[:2])))[1] == [-1, -1]


def test_torchrun_launch_gives_the_same_tokens():
    prompts = random_prompts((5, 3))
    expected = [hf_greedy(generating_model("qwen2"), p, MAX_NEW) for p in prompts]
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here.parents[1])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--master-port", str(free_port()), str(here / "torchrun_generate.py")]
    command += ["qwen2", json.dumps(prompts), str(MAX_NEW)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected
