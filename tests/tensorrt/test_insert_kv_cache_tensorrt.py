"""The KV-cache rewrite, checked in PyTorch: the step graph (prefill, then decode steps, through the explicit
cache) reproduces the model's own logits. TensorRT cannot run here, so this is where the engines' graph-level
semantics are verified; the converters follow the same reference ops."""

import pytest
import torch
from support import FP32_REL_TOL, TINY_MODELS, rel_err

from trtllm_compile.passes import Stage, registered_passes
from trtllm_compile.tensorrt.export import KVCacheConfig, export_step_graph

CAPACITY = 24


@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt2", "gptj"])  # gemma3: sliding windows of 4 < 9 tokens
def test_prefill_then_decode_through_the_cache_matches_the_model(name):
    model = TINY_MODELS[name].build()
    graph = export_step_graph(model, torch.float32, max_batch_size=4, max_seq_len=CAPACITY, max_num_tokens=CAPACITY)
    gm = graph.graph_module
    caches = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder" and n.meta.get("kv_cache")]
    assert len(caches) == 2 * model.config.num_hidden_layers
    batch, prompt, new = 2, 6, 3
    ids = torch.randint(0, 256, (batch, prompt + new))
    with torch.no_grad():
        expected = model(ids).logits
    cache = [torch.zeros(batch, *c.shape[1:]) for c in caches]
    lengths = torch.zeros(batch, dtype=torch.int32)
    logits, *cache = gm(ids[:, :prompt], torch.arange(prompt).expand(batch, prompt), lengths, *cache)
    assert rel_err(logits, expected[:, :prompt]) < FP32_REL_TOL
    lengths += prompt
    for t in range(prompt, prompt + new):
        logits, *cache = gm(ids[:, t : t + 1], lengths[:, None].long(), lengths, *cache)
        assert rel_err(logits, expected[:, t : t + 1]) < FP32_REL_TOL
        lengths += 1


def test_chunked_prefill_continues_a_cache():
    model = TINY_MODELS["llama"].build()
    gm = export_step_graph(model, torch.float32, 2, CAPACITY, CAPACITY).graph_module
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        expected = model(ids).logits
    cache = [torch.zeros(1, 2, CAPACITY, 16) for _ in range(4)]
    _, *cache = gm(ids[:, :4], torch.arange(4)[None], torch.tensor([0], dtype=torch.int32), *cache)
    logits, *_ = gm(ids[:, 4:], torch.arange(4, 10)[None], torch.tensor([4], dtype=torch.int32), *cache)
    assert rel_err(logits, expected[:, 4:]) < FP32_REL_TOL


def test_pass_is_inert_unless_asked():
    spec = next(s for s in registered_passes({Stage.CACHE}) if s.name == "insert_kv_cache_tensorrt")
    model = TINY_MODELS["llama"].build()
    gm = export_step_graph(model, torch.float32, 2, CAPACITY, CAPACITY, with_kv_cache=False).graph_module
    assert spec.fn(gm, None) == 0 and spec.fn(gm, object()) == 0  # the backend's configs carry no capacity
    assert spec.fn(gm, KVCacheConfig(CAPACITY)) == model.config.num_hidden_layers
