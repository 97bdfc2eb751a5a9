"""`trtllm-compile bench` runs on CPU with the embedded default model and writes its measurements."""

import json

import pytest

from trtllm_compile.cli import main


@pytest.mark.slow
def test_bench_on_cpu_measures_engine_and_eager_peer(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = [
        "bench",
        "--input-len",
        "8",
        "--output-len",
        "4",
        "--batch-sizes",
        "1,2",
        "--compare",
        "eager",
        "--max-batch-size",
        "2",
        "--max-num-tokens",
        "64",
        "--repeat",
        "3",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    written = json.loads(out.read_text())
    assert written["tuned_plans"] == []  # nothing is timed on CPU (the reference ops run)
    results = written["results"]
    assert sorted((r["system"], r["batch_size"]) for r in results) == [
        ("hf-eager", 1),
        ("hf-eager", 2),
        ("trtllm", 1),
        ("trtllm", 2),
    ]
    assert all(r["tokens_per_s"] > 0 and r["tpot_ms"] > 0 for r in results)
    for r in results:  # three measured runs each, the figure their median
        assert len(r["tpot_ms_runs"]) == 3 and r["tpot_ms"] == sorted(r["tpot_ms_runs"])[1]
    assert "median of 3 runs" in capsys.readouterr().out


def test_bench_rejects_an_unknown_peer_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--compare", "vllm"]) == 2
    assert "unknown peer(s) ['vllm']; choose from eager, inductor or none" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_measures_each_weight_and_kv_cache_format_and_prints_them_side_by_side(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--quantization", "none,int4_rtn", "--kv-cache", "none,fp8", "--compare", "none"]
    argv += ["--batch-sizes", "1", "--input-len", "8", "--output-len", "4", "--max-batch-size", "1"]
    assert main([*argv, "--max-num-tokens", "64", "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    systems = ["trtllm", "trtllm kv=fp8", "trtllm int4_rtn", "trtllm int4_rtn kv=fp8"]
    assert [(r["system"], r["batch_size"]) for r in results] == [(system, 1) for system in systems]
    printed = capsys.readouterr().out
    summary = printed[printed.index("tokens/s by format") :].splitlines()
    others = ["none+kv_fp8", "int4_rtn", "int4_rtn+kv_fp8"]
    header = ["batch", "none", *others, *(w for o in others for w in (o, "x", "none"))]
    header += [w for o in others for w in ("decode", o, "x", "none")]
    assert summary[1].split() == header
    assert json.loads(out.read_text())["args"]["kv_cache"] == "none,fp8"
    assert summary[2].split()[0] == "1" and summary[2].endswith("x")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch-sizes", "0"], "--batch-sizes takes a comma list of positive integers or 'max', not '0'"),
        (["--batch-sizes", "1,x"], "--batch-sizes takes a comma list of positive integers or 'max', not '1,x'"),
        (["--peer-batch-sizes", "max"], "--peer-batch-sizes takes a comma list of positive integers, not 'max'"),
        (["--output-len", "0"], "--input-len and --output-len must be >= 1, got 128 and 0"),
    ],
)
def test_bench_rejects_bad_sizes_before_building_the_model(capsys, argv, message):
    assert main(["bench", "--config", "llama-2-7b", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_random_model_larger_than_free_memory_is_refused_before_it_is_built(monkeypatch, capsys):
    from trtllm_compile.runtime import kv_cache

    monkeypatch.setattr(kv_cache, "available_host_memory", lambda: 4 << 30)
    assert main(["bench", "--config", "llama-2-7b", "--dtype", "bfloat16", "--compare", "none"]) == 2
    err = capsys.readouterr().err
    assert "llama-2-7b (32 layers) in bfloat16 takes 12.6 GiB of weights, more than the 4.0 GiB free on cpu" in err
    assert "cut it with --num-layers" in err


def test_bench_rejects_an_unknown_kv_cache_format_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--kv-cache", "int8"]) == 2
    assert "unknown KV cache format(s) ['int8']; choose from none, fp8" in capsys.readouterr().err


def test_bench_rejects_an_unknown_weight_format_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--quantization", "none,nf4"]) == 2
    assert "unknown quantization format(s) ['nf4']; choose from none, fp8, int8_sq, int4_awq, int4_gptq, int4_rtn" in (
        capsys.readouterr().err
    )


def test_bench_refuses_tensor_parallel_with_a_weight_format_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--tp", "2", "--quantization", "fp8"]) == 2
    assert "bench --quantization or --kv-cache with --tp > 1 is not supported yet" in capsys.readouterr().err


def test_side_by_side_compares_common_batch_sizes_and_the_fullest_loads(capsys):
    from trtllm_compile.bench.cli import _print_side_by_side
    from trtllm_compile.bench.measure import Measurement

    def run(system: str, batch: int, seconds: float, tpot_ms: float) -> Measurement:
        return Measurement(system, batch, 8, 4, seconds, 1.0, tpot_ms)

    results = [run("trtllm", 1, 1.0, 6.0), run("trtllm", 8, 1.0, 8.0)]
    results += [run("trtllm fp8", 1, 0.5, 4.0), run("trtllm fp8", 16, 1.0, 10.0)]
    _print_side_by_side(results, {"none": "trtllm", "fp8": "trtllm fp8"})
    rows = [line.split() for line in capsys.readouterr().out.strip().splitlines()[2:]]
    assert rows == [["1", "4.0", "8.0", "2.00x", "1.500x"], ["max", "32.0", "64.0", "2.00x", "0.800x"]]


def test_repeated_runs_report_each_figure_s_median_and_every_tpot():
    from trtllm_compile.bench.measure import Measurement, median_of

    runs = [
        Measurement("trtllm", 1, 8, 4, seconds, ttft, tpot) for seconds, ttft, tpot in [(3, 9, 2), (1, 7, 5), (2, 8, 1)]
    ]
    combined = median_of(runs)
    assert (combined.seconds, combined.ttft_ms, combined.tpot_ms) == (2, 8, 2)
    assert combined.tpot_ms_runs == [2, 5, 1] and combined.as_dict()["tpot_ms_runs"] == [2, 5, 1]
    with pytest.raises(ValueError, match="no runs"):
        median_of([])


def test_bench_rejects_no_repeat_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--repeat", "0"]) == 2
    assert "--repeat must be at least 1, got 0" in capsys.readouterr().err


def test_an_unknown_peer_is_named_with_the_choices():
    from trtllm_compile.bench.measure import measure_peer

    with pytest.raises(ValueError, match="unknown peer 'vllm'; choose from eager, inductor"):
        measure_peer("vllm", model=None, prompts=None, output_len=1)


@pytest.mark.parametrize("shape", ["llama-2-7b", "llama-3-8b"])
def test_layer_gemms_are_the_fused_gemms_of_the_shapes_layer(shape):
    """The GEMV benchmarks' shapes, against the weights of a layer of that model (built on the meta device)."""
    import torch
    import transformers

    from trtllm_compile.bench.shapes import SHAPES, layer_gemms

    config_class, fields = SHAPES[shape]
    with torch.device("meta"):
        layer = transformers.LlamaForCausalLM(getattr(transformers, config_class)(**{**fields, "num_hidden_layers": 1}))
    attention, mlp = layer.model.layers[0].self_attn, layer.model.layers[0].mlp
    fused = lambda *linears: (sum(m.out_features for m in linears), linears[0].in_features)  # noqa: E731
    assert layer_gemms(shape) == {
        "qkv": fused(attention.q_proj, attention.k_proj, attention.v_proj),
        "o": fused(attention.o_proj),
        "gate_up": fused(mlp.gate_proj, mlp.up_proj),
        "down": fused(mlp.down_proj),
    }
    with pytest.raises(ValueError, match="not a Llama-style shape"):
        layer_gemms("gptj-6b")


def test_the_tuner_s_picks_are_listed_with_every_candidate_s_time(monkeypatch):
    import torch

    from trtllm_compile.kernels import tuning

    key = ("paged_decode", 1, 32, 32, 128, 16, torch.bfloat16, torch.device("cuda", 0))
    monkeypatch.setattr(tuning, "plans", {key: "N32 w2 s2"})
    monkeypatch.setattr(tuning, "tuning_log", {key: {"N32 w2 s2": 0.0071234, "N64 w4 s2": 0.0083}})
    assert tuning.chosen_plans() == [
        {
            "key": ["paged_decode", "1", "32", "32", "128", "16", "torch.bfloat16"],
            "plan": "N32 w2 s2",
            "us": {"N32 w2 s2": 7.12, "N64 w4 s2": 8.3},
        }
    ]
