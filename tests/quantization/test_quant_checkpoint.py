"""Quantized checkpoints: safetensors + JSON, loaded without unpickling, giving the same logits."""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from quant_support import corpus_file
from safetensors.torch import load_file, save_file
from support import TINY_MODELS

from trtllm_compile.quantization import FORMATS, calibrate, quantize
from trtllm_compile.quantization.checkpoint import load_quantized, save_quantized
from trtllm_compile.quantization.cli import add_parsers

REPO = Path(__file__).resolve().parents[2]


def _tiny_quantized(fmt: str):
    model = TINY_MODELS["llama"].build()
    windows = torch.randint(0, 256, (3, 24), generator=torch.Generator().manual_seed(0))
    calibration = calibrate(model, windows=windows, samples=48, grams=True, progress=False)
    return quantize(model, fmt, calibration=calibration, group_size=32, kv_cache="fp8"), windows


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_round_trip_gives_the_same_logits_without_unpickling(tmp_path, monkeypatch, fmt):
    model, windows = _tiny_quantized(fmt)
    save_quantized(model, tmp_path)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".safetensors"}

    def refuse(*args, **kwargs):
        raise AssertionError("loading a quantized checkpoint must not unpickle anything")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = load_quantized(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(windows).logits, model(windows).logits)
    assert loaded.trtllm_quant_config == model.trtllm_quant_config
    assert str(loaded.model.layers[1].mlp) == str(model.model.layers[1].mlp)


def test_saving_an_unquantized_model_says_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="trtllm_compile.quantize"):
        save_quantized(TINY_MODELS["llama"].build(), tmp_path)


def test_a_save_never_writes_into_a_model_folder_and_an_interrupted_one_leaves_the_last_checkpoint(
    tmp_path, monkeypatch
):
    from trtllm_compile.quantization import checkpoint

    model, _ = _tiny_quantized("int8_sq")
    source = tmp_path / "source-model"
    model.config.save_pretrained(source)  # a Hugging Face model folder
    with pytest.raises(FileExistsError, match="not a quantized checkpoint"):
        save_quantized(model, source)
    from trtllm_compile.cli import main  # the CLI says so before it loads or calibrates anything

    assert main(["quantize", "--format", "fp8", "--calib", str(tmp_path / "absent.txt"), "--out", str(source)]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source-model"]
    assert [p.name for p in source.iterdir()] == ["config.json"]

    out = save_quantized(model, tmp_path / "ckpt")
    written = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(_tiny_quantized("fp8")[0], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "source-model"]  # no staging folder left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == written
    monkeypatch.undo()
    save_quantized(_tiny_quantized("fp8")[0], out)  # a checkpoint is replaced whole
    assert load_quantized(out).trtllm_quant_config.format == "fp8"


_LOAD_AND_RUN = """
import sys
from safetensors.torch import load_file, save_file
import torch
from trtllm_compile.quantization.checkpoint import load_quantized
model = load_quantized(sys.argv[1])
with torch.no_grad():
    logits = model(load_file(sys.argv[2])["input_ids"]).logits
save_file({"logits": logits.contiguous()}, sys.argv[3])
"""


@pytest.mark.slow
def test_smollm2_round_trip_in_a_fresh_process_and_eval_cli(tmp_path, smollm2, quantized_smollm2, capsys):
    """INT4 AWQ SmolLM2 (packed weights, group scales, zero points, o_proj input multipliers) saved, then
    loaded by a new interpreter: bit-identical logits. Then `trtllm-compile eval DIR` reads the same folder."""
    _, tokenizer = smollm2
    model = quantized_smollm2("int4_awq")
    folder = save_quantized(model, tmp_path / "smollm2-int4-awq", tokenizer)
    input_ids = tokenizer(["The capital of France is Paris. The capital of Italy is"], return_tensors="pt").input_ids
    save_file({"input_ids": input_ids}, tmp_path / "inputs.safetensors")
    with torch.no_grad():
        expected = model(input_ids).logits
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-c", _LOAD_AND_RUN, str(folder), str(tmp_path / "inputs.safetensors")]
    subprocess.run([*command, str(tmp_path / "out.safetensors")], env=env, check=True, timeout=600)
    assert torch.equal(load_file(tmp_path / "out.safetensors")["logits"], expected)

    parser = argparse.ArgumentParser(prog="trtllm-compile")
    add_parsers(parser.add_subparsers())
    args = parser.parse_args(["eval", str(folder), "--text", str(corpus_file("wiki.utf8")), "--max-windows", "1"])
    assert args.handler(args) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1].split()[:3] == ["model", "format", "perplexity"]
    assert table[2].split()[1] == "int4_awq"  # the format read back from quant_config.json
