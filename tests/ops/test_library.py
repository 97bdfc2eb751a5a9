"""ops.library: every trtllm op keeps its PyTorch body, and a CPU engine's step graph calls those bodies directly."""

from __future__ import annotations

import torch
from support import generating_model, hf_greedy, random_prompts

import trtllm_compile.ops  # noqa: F401  (defines the ops)
from trtllm_compile import LLM
from trtllm_compile.ops.library import REFERENCES
from trtllm_compile.runtime.sampling import SamplingParams


def test_every_trtllm_op_keeps_its_body():
    packets = {name: getattr(torch.ops.trtllm, name) for name in dir(torch.ops.trtllm)}
    defined = {f"trtllm::{name}" for name, op in packets.items() if isinstance(op, torch._ops.OpOverloadPacket)}
    assert defined == set(REFERENCES)


def test_cpu_step_graph_calls_the_bodies_and_generates_as_eager_does():
    model = generating_model("llama")
    llm = LLM(model, max_batch_size=2, max_num_tokens=64)
    nodes = [n for n in llm.engine.runner.step.graph_module.graph.nodes if n.op == "call_function"]
    assert not [n for n in nodes if isinstance(n.target, torch._ops.OpOverload) and n.target.namespace == "trtllm"]
    bodies = {getattr(n.target, "__wrapped__", None): n.meta.get("bound_op") for n in nodes}
    for name in ("trtllm::paged_attention", "trtllm::add_rms_norm", "trtllm::mlp_activation"):
        assert bodies[REFERENCES[name]].name() == name  # the body called, and the op it stands for
    prompt = random_prompts((9,))[0]
    with torch.profiler.profile() as profile:
        output = llm.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0))[0]
    assert output.token_ids == hf_greedy(model, prompt, 6)
    assert "trtllm::paged_attention" in {event.key for event in profile.key_averages()}  # still named in profiles
