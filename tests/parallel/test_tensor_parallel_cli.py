"""`trtllm-compile bench --tp 2` and `trtllm-compile serve --tp 2` on CPU (gloo) with SmolLM2-135M (real weights):
the benchmark measures the tensor-parallel engine, and the server answers with the single-device greedy text."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from trtllm_compile.cli import main
from trtllm_compile.models import DEFAULT_MODEL_NAME
from trtllm_compile.parallel.launch import free_port
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
MAX_TOKENS = 8
START_TIMEOUT_S = 600  # two ranks export and fuse SmolLM2 on a shared 2-core CPU


def test_bench_measures_the_tensor_parallel_engine(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--device", "cpu", "--tp", "2", "--compare", "none", "--batch-sizes", "1,2"]
    argv += ["--input-len", "8", "--output-len", "4", "--max-batch-size", "2", "--max-num-tokens", "64"]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert sorted((r["system"], r["batch_size"]) for r in results) == [("trtllm tp=2", 1), ("trtllm tp=2", 2)]
    assert all(r["tokens_per_s"] > 0 for r in results)
    assert "trtllm tp=2" in capsys.readouterr().out


def test_serve_answers_with_the_single_device_greedy_text(smollm2, tmp_path):
    model, tokenizer = smollm2
    engine = dict(max_batch_size=2, max_num_tokens=128, num_blocks=32)
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    expected = LLM(model, tokenizer, **engine).generate(PROMPT, params)[0].text

    port = free_port()
    command = [sys.executable, "-m", "trtllm_compile.cli", "serve", "--device", "cpu", "--tp", "2"]
    command += ["--port", str(port), "--max-batch-size", "2", "--max-num-tokens", "128", "--num-blocks", "32"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
            while True:  # bounded by the deadline or the process exiting
                try:
                    if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the server did not come up (exit {process.poll()}):\n{log_path.read_text()[-4000:]}")
                time.sleep(1.0)
            body = {"model": DEFAULT_MODEL_NAME, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0}
            answer = httpx.post(f"{url}/v1/completions", json=body, timeout=300).json()
            assert answer["choices"][0]["text"] == expected
        finally:
            process.send_signal(signal.SIGINT)
            try:
                assert process.wait(120) == 0, log_path.read_text()[-4000:]
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
