"""Engines for the supported architectures: both steps build, every decoder layer has one native attention, nothing
is left unconverted, and the engine files and manifest are written."""

import argparse
import json

import pytest
import torch
from network_support import MAX_BATCH, MAX_SEQ
from support import LAYERS, TINY_MODELS

from trtllm_compile.tensorrt import UnsupportedOperatorError, build
from trtllm_compile.tensorrt.cli import add_build_parser, run_build

ROPE_MODELS = {"llama", "qwen2", "gemma3"}


def _check_engines(result, num_layers: int, rope: bool):
    assert set(result.engines) == {"prefill", "decode"}
    for engine in result.engines.values():
        counts = engine.layer_counts
        assert counts["ATTENTION_INPUT"] == counts["ATTENTION_OUTPUT"] == num_layers  # one per decoder layer
        assert counts["KV_CACHE_UPDATE"] == 2 * num_layers
        assert counts.get("ROTARY_EMBEDDING", 0) == (2 * num_layers if rope else 0)
        assert engine.path.exists() and engine.path.stat().st_size == engine.num_bytes > 0
    assert result.layer_counts["ATTENTION_INPUT"] == 2 * num_layers  # summed over both engines
    assert result.torch_nodes == []  # no unconverted node


@pytest.mark.parametrize("name", ["llama", "qwen2", "gemma3", "gpt2"])
def test_tiny_models_build_prefill_and_decode(tiny_builds, name):
    _, result = tiny_builds(name)
    _check_engines(result, LAYERS, rope=name in ROPE_MODELS)
    expected = TINY_MODELS[name].expected_matches()
    assert result.report.matches == expected  # one step graph serves both engines
    assert result.report.fallbacks == []


@pytest.mark.slow
def test_smollm2_real_weights(smollm2, engine_cache, tmp_path):
    model, tokenizer = smollm2  # load_default_model(): SmolLM2-135M-Instruct
    settings = dict(max_batch_size=MAX_BATCH, max_seq_len=64, cache_dir=engine_cache, progress=False)
    result = build(model, tokenizer=tokenizer, out_dir=tmp_path, **settings)
    _check_engines(result, 30, rope=True)
    assert result.report.matches == {"attention": 30, "rope": 60, "mlp": 30, "norm": 61}
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["layer_counts"] == result.layer_counts
    assert (tmp_path / manifest["tokenizer"] / "tokenizer_config.json").exists()
    # model=None builds the same default model: the same cache entry.
    again = build(None, **settings)
    assert again.cache_hit and again.cache_key == result.cache_key


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_and_bf16_builds(tiny_builds, dtype):
    _, result = tiny_builds("llama", dtype)
    expected = {torch.float16: "HALF", torch.bfloat16: "BF16"}[dtype]
    for engine in result.engines.values():
        logits = next(o for o in engine.outputs if o["name"] == "logits")
        assert logits["dtype"] == expected
    assert result.manifest["settings"]["dtype"] == str(dtype).removeprefix("torch.")


def test_manifest_describes_the_engines(tiny_builds):
    _, result = tiny_builds("llama")
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest["tensorrt"].startswith(("tensorrt_rtx", "tensorrt"))
    assert manifest["settings"]["max_seq_len"] == MAX_SEQ
    decode = manifest["engines"]["decode"]
    inputs = {i["name"]: i for i in decode["inputs"]}
    assert inputs["input_ids"]["profile"] == [[1, 1], [MAX_BATCH, 1], [MAX_BATCH, 1]]
    assert inputs["k_cache_0"]["shape"] == [-1, 2, MAX_SEQ, 16]
    aliases = {o["name"]: o.get("aliases") for o in decode["outputs"]}
    assert aliases["k_cache_0_out"] == "k_cache_0" and aliases["logits"] is None
    prefill_ids = next(i for i in manifest["engines"]["prefill"]["inputs"] if i["name"] == "input_ids")
    assert prefill_ids["profile"][2] == [MAX_BATCH, MAX_SEQ]


@torch.library.custom_op("trtllm_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@mystery.register_fake
def _(x):
    return torch.empty_like(x)


class _Mystery(torch.nn.Module):
    """Wraps the final norm with an op no converter knows."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.ops.trtllm_test.mystery(self.inner(x))


@pytest.fixture(scope="module")
def mystery_model():
    model = TINY_MODELS["llama"].build()
    model.model.norm = _Mystery(model.model.norm)
    return model


def test_missing_converter_names_op_node_and_fix(mystery_model, engine_cache):
    with pytest.raises(UnsupportedOperatorError) as error:
        build(mystery_model, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=engine_cache, progress=False)
    message = str(error.value)
    assert "trtllm_test.mystery" in message and "%mystery" in message and "model.model.norm" in message
    assert "partition=True" in message and "tensorrt/converters" in message


def test_partition_runs_the_op_in_pytorch_between_engines(mystery_model, engine_cache):
    result = build(
        mystery_model,
        max_batch_size=MAX_BATCH,
        max_seq_len=MAX_SEQ,
        cache_dir=engine_cache,
        partition=True,
        progress=False,
    )
    assert {n["op"] for n in result.torch_nodes} == {"trtllm_test.mystery"}
    assert {n["step"] for n in result.torch_nodes} == {"prefill", "decode"}
    assert len(result.engines) == 4  # per step: the layers before the op, and the LM head after it
    assert sum(e.layer_counts.get("ATTENTION_INPUT", 0) for e in result.engines.values()) == 2 * LAYERS
    assert "run in PyTorch between engines" in result.summary()
    assert any(f.family == "tensorrt" and f.op == "trtllm_test.mystery" for f in result.report.fallbacks)


def test_partitioned_graph_computes_what_the_graph_does(mystery_model):
    from trtllm_compile.tensorrt.export import export_step_graph
    from trtllm_compile.tensorrt.partition import partition

    step = export_step_graph(mystery_model, torch.float32, MAX_BATCH, MAX_SEQ, MAX_SEQ)
    split = partition(step.graph_module)
    ids = torch.randint(0, 256, (2, 5))
    caches = [torch.zeros(2, 2, MAX_SEQ, 16) for _ in range(2 * LAYERS)]
    args = (ids, torch.arange(5).expand(2, 5), torch.zeros(2, dtype=torch.int32), *caches)
    for got, want in zip(split.parent(*args), step.graph_module(*args), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_refittable_build_needs_a_gpu_with_tensorrt_rtx(engine_cache):
    from trtllm_compile.tensorrt import trt as flavour

    if not flavour.IS_RTX:
        pytest.skip("full TensorRT builds refittable engines without a GPU")
    with pytest.raises(RuntimeError, match="refittable engines on the GPU"):
        build(TINY_MODELS["llama"].build(), refittable=True, max_seq_len=MAX_SEQ, cache_dir=engine_cache)


def test_cli_build_writes_engines_and_prints_the_summary(tmp_path, engine_cache, capsys, smollm2):
    model = TINY_MODELS["gpt2"].build()
    model.save_pretrained(tmp_path / "model")
    smollm2[1].save_pretrained(tmp_path / "model")  # any tokenizer: the CLI loads a folder like a user's
    subparsers = argparse.ArgumentParser(prog="trtllm-compile").add_subparsers()
    parser = add_build_parser(subparsers)
    out = tmp_path / "engines"
    args = parser.parse_args(
        [
            str(tmp_path / "model"),
            "--target",
            "tensorrt",
            "--out",
            str(out),
            "--max-batch-size",
            "2",
            "--max-seq-len",
            str(MAX_SEQ),
            "--cache-dir",
            str(engine_cache),
            "--no-progress",
        ]
    )
    assert run_build(args) == 0
    printed = capsys.readouterr().out
    assert f"ATTENTION_INPUT {2 * LAYERS}" in printed
    assert {p.name for p in out.iterdir()} >= {"prefill.engine", "decode.engine", "manifest.json", "tokenizer"}


def test_progress_monitor_draws_one_bar_per_engine(capsys):
    from trtllm_compile.tensorrt.progress import progress_monitor

    monitor = progress_monitor("building decode")
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Optimizing graph", "Building engine", 3)  # nested: shown beside the bar
    assert monitor.step_complete("Optimizing graph", 0)
    monitor.phase_finish("Optimizing graph")
    assert monitor.step_complete("Building engine", 0) and monitor.step_complete("Building engine", 1)
    monitor.phase_finish("Building engine")
    drawn = capsys.readouterr().err
    assert "building decode" in drawn and "Optimizing graph" in drawn and "2/2" in drawn
