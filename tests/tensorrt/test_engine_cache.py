"""The disk engine cache: a second build of the same model and settings is a hit (and fast); the key moves with
one weight, a setting, or the TensorRT version."""

import time
from pathlib import Path

import pytest
import torch
from network_support import MAX_BATCH, MAX_SEQ
from support import TINY_MODELS

from trtllm_compile.tensorrt import build, load
from trtllm_compile.tensorrt import trt as flavour
from trtllm_compile.tensorrt.build import BuildSettings
from trtllm_compile.tensorrt.cache import EngineCache, cache_key, replace_file, weights_digest

SETTINGS = BuildSettings(max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ).as_dict()


def test_second_build_is_a_cache_hit_and_faster(tmp_path):
    model = TINY_MODELS["qwen2"].build()
    options = dict(max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=tmp_path, progress=False)
    start = time.perf_counter()
    first = build(model, **options)
    build_seconds = time.perf_counter() - start
    start = time.perf_counter()
    second = build(model, **options)
    hit_seconds = time.perf_counter() - start
    assert not first.cache_hit and second.cache_hit
    assert second.cache_key == first.cache_key and second.engines.keys() == first.engines.keys()
    assert second.layer_counts == first.layer_counts
    assert hit_seconds < build_seconds / 5, (hit_seconds, build_seconds)


def test_one_weight_changes_the_key():
    model = TINY_MODELS["llama"].build()
    before = cache_key(model, SETTINGS, flavour.version())
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[3, 7] += 1e-3
    assert cache_key(model, SETTINGS, flavour.version()) != before


def test_settings_and_tensorrt_version_change_the_key():
    model = TINY_MODELS["llama"].build()
    key = cache_key(model, SETTINGS, flavour.version())
    assert cache_key(model, {**SETTINGS, "dtype": "bfloat16"}, flavour.version()) != key
    assert cache_key(model, SETTINGS, "tensorrt 99.0") != key
    assert cache_key(TINY_MODELS["llama"].build(), SETTINGS, flavour.version()) == key  # same weights, same key


def test_tied_weights_are_hashed_once_but_the_tie_counts():
    model = TINY_MODELS["gpt2"].build()  # lm_head ties the token embedding
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    untied = TINY_MODELS["gpt2"].build()
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    assert weights_digest(model) != weights_digest(untied)


def test_out_dir_and_load(tiny_builds, engine_cache, tmp_path):
    model, built = tiny_builds("llama")
    copied = build(model, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=engine_cache, out_dir=tmp_path)
    assert copied.cache_hit and copied.directory == tmp_path
    loaded = load(tmp_path)
    assert loaded.layer_counts == built.layer_counts
    assert all(
        engine.path.read_bytes() == built.engines[name].path.read_bytes() for name, engine in loaded.engines.items()
    )


def test_incomplete_entry_is_rebuilt(tiny_builds, engine_cache):
    _, built = tiny_builds("llama")
    cache = EngineCache(engine_cache)
    assert cache.lookup(built.cache_key) is not None
    (cache.entry(built.cache_key) / "manifest.json").rename(cache.entry(built.cache_key) / "manifest.bak")
    try:
        assert cache.lookup(built.cache_key) is None
    finally:
        (cache.entry(built.cache_key) / "manifest.bak").rename(cache.entry(built.cache_key) / "manifest.json")


def test_timing_cache_where_the_flavour_times_tactics(tiny_builds, engine_cache):
    tiny_builds("llama")
    timing = EngineCache(engine_cache).timing_cache_path
    if flavour.IS_RTX:
        assert not flavour.has_timing_cache() and not timing.exists()  # RTX compiles kernels at run time
    else:
        assert timing.stat().st_size > 0  # full TensorRT: tactic timings kept for the next build


def test_a_replaced_file_is_whole_or_as_it_was(tmp_path, monkeypatch):
    """Refitted engines and timing caches are written this way: an interruption keeps the file before it."""
    path = tmp_path / "decode.engine"
    replace_file(path, b"old engine")

    def interrupted(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replace_file(path, b"refitted engine")
    assert path.read_bytes() == b"old engine" and [p.name for p in tmp_path.iterdir()] == ["decode.engine"]
    monkeypatch.undo()
    replace_file(path, b"refitted engine")
    assert path.read_bytes() == b"refitted engine"
