"""benchmarks/decode_profile.py runs on CPU with the embedded default model and writes its figures."""

import json

import pytest
from support import load_benchmark


@pytest.mark.slow
def test_decode_profile_on_cpu_reports_wall_time_and_op_categories(tmp_path, capsys):
    out = tmp_path / "profile.json"
    argv = "--config default --dtype float32 --device cpu --batch 2 --context 16 --steps 3 --profile-steps 2 --prefill"
    load_benchmark("decode_profile").main([*argv.split(), "--out", str(out)])

    result = json.loads(out.read_text())
    assert result["host"]["wall_ms"] > 0 and result["host"]["tokens_per_s"] > 0
    assert result["host"]["gpu_ms"] is None  # no CUDA graphs on CPU
    assert result["tuned_plans"] == []  # nor plans timed
    assert result["kernel_source"].startswith("CPU self time")
    categories = {c["category"]: c["us"] for c in result["categories"]}
    assert list(categories)[0] == "GEMM" and "other" in categories
    assert sum(categories.values()) > 0 and categories["GEMM"] > 0
    assert result["kernels"] and all(row["calls"] > 0 and row["us"] > 0 for row in result["kernels"])
    prefill = result["prefill"]
    assert prefill["wall_ms"] > 0 and prefill["kernels"] and prefill["categories"][0]["us"] > 0  # GEMM
    assert prefill["host"] and all(row["us"] > 0 for row in prefill["host"])
    functions = [row["name"] for row in prefill["python"]]  # the engine's own step is among the profiled functions
    assert any(name.startswith("runtime/engine.py:") and name.endswith("(step)") for name in functions)
    assert all(row["calls"] > 0 and row["us"] > 0 for row in prefill["python"])
    printed = capsys.readouterr().out
    assert "calls/step" in printed and "us/step" in printed and "decode step wall" in printed
    assert "prefill step of 2 x 16 tokens" in printed and "Python function" in printed


def test_kernel_rows_keep_device_kernels_and_categorize_them():
    """The CUDA branch on fake profiler events: CPU ops and GPU user annotations stay out of the kernel rows."""
    from types import SimpleNamespace

    import torch

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def event(key, device_type, us, count=2, annotation=False):
        return SimpleNamespace(
            key=key,
            device_type=device_type,
            count=count,
            self_device_time_total=us,
            self_cpu_time_total=5.0,
            is_user_annotation=annotation,
        )

    events = [
        event("nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", cuda, 600.0, count=8),
        event("_paged_decode_kernel", cuda, 200.0),
        event("_rms_norm_kernel", cuda, 40.0),
        event("Memcpy HtoD (Pageable -> Device)", cuda, 20.0),
        event("void at::native::reduce_kernel<512, 1, ArgMaxOps<float>>", cuda, 10.0),
        event("aten::mm", cpu, 900.0),  # the CPU op that launched the GEMM: its device time is the kernel's
        event("## Call CompiledFxGraph ##", cuda, 5000.0, annotation=True),
    ]
    module = load_benchmark("decode_profile")
    rows, source = module.kernel_rows(SimpleNamespace(key_averages=lambda: events), steps=2)
    assert source == "device kernel time"
    assert [r["name"] for r in rows][:2] == ["nvjet_tst_64x8_64x16_4x1_v_bz_splitK_TNT", "_paged_decode_kernel"]
    assert rows[0] == {"name": rows[0]["name"], "calls": 4.0, "us": 300.0}
    categories = {c["category"]: c["us"] for c in module.categorize(rows)}
    assert categories == {
        "GEMM": 300.0,
        "attention": 100.0,
        "norm": 20.0,
        "rope": 0.0,
        "sampling": 5.0,
        "activation": 0.0,
        "copies": 10.0,
        "other": 0.0,
    }


@pytest.mark.slow
def test_decode_profile_quantizes_the_step_graph_and_its_kv_cache(tmp_path):
    out = tmp_path / "profile.json"
    argv = "--config default --dtype float32 --device cpu --batch 2 --context 16 --steps 2 --profile-steps 1"
    argv += " --quantization fp8 --kv-cache fp8"
    load_benchmark("decode_profile").main([*argv.split(), "--out", str(out)])

    result = json.loads(out.read_text())
    assert result["args"]["quantization"] == "fp8" and result["args"]["kv_cache"] == "fp8"
    names = [row["name"] for row in result["kernels"]]
    assert any("fp8_linear" in name for name in names)


def test_replay_ms_times_the_decode_graph_of_the_batchs_bucket_not_a_prefill_graph(monkeypatch):
    """The runner keys its graphs by (rows, prefill tokens or None); the decode graph of batch 10 is (16, None)."""
    from types import SimpleNamespace

    module = load_benchmark("decode_profile")
    timed = []
    monkeypatch.setattr(module.measure, "replay_ms", lambda graph, steps: timed.append(graph) or 1.0)
    graphs = {(1, 16): ("prefill 16",), (16, None): ("decode 16",), (32, None): ("decode 32",)}
    runner = SimpleNamespace(_graphs=graphs, graph_sizes=[1, 2, 4, 8, 16, 32])
    llm = SimpleNamespace(engine=SimpleNamespace(runner=runner))
    assert module.replay_ms(llm, 10, steps=3) == 1.0 and timed == ["decode 16"]
    assert module.replay_ms(llm, 4, steps=3) is None  # its bucket (4) was never captured
