"""Fixtures of the TensorRT target's tests: engine builds shared across files (a build costs seconds), a private
engine cache per session, and a skip for everything that needs a TensorRT builder where none is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/support.py

from network_support import MAX_BATCH, MAX_SEQ  # noqa: E402

from trtllm_compile.tensorrt import trt as flavour  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if flavour.trt is not None:
        return
    skip = pytest.mark.skip(reason=f"needs tensorrt or tensorrt_rtx ({flavour.INSTALL_HINT})")
    for item in items:
        if "tensorrt" in str(item.fspath) and "needs_no_trt" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("engine-cache")


@pytest.fixture(scope="session")
def tiny_builds(engine_cache):
    """build(name, dtype) of a tiny random-weight model, each built once per session."""
    from support import TINY_MODELS

    from trtllm_compile.tensorrt import build

    built = {}

    def get(name: str, dtype: torch.dtype = torch.float16):
        if (name, dtype) not in built:
            model = TINY_MODELS[name].build()
            built[name, dtype] = (
                model,
                build(
                    model,
                    max_batch_size=MAX_BATCH,
                    max_seq_len=MAX_SEQ,
                    dtype=dtype,
                    cache_dir=engine_cache,
                    progress=False,
                ),
            )
        return built[name, dtype]

    return get
