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
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted((r["system"], r["batch_size"]) for r in results) == [
        ("hf-eager", 1),
        ("hf-eager", 2),
        ("trtllm", 1),
        ("trtllm", 2),
    ]
    assert all(r["tokens_per_s"] > 0 and r["tpot_ms"] > 0 for r in results)
    assert "tokens/s" in capsys.readouterr().out


def test_bench_rejects_an_unknown_peer_before_building_the_model(capsys):
    assert main(["bench", "--config", "llama-2-7b", "--compare", "vllm"]) == 2
    assert "unknown peer(s) ['vllm']; choose from eager, inductor or none" in capsys.readouterr().err
