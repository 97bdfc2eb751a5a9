"""The disk engine cache: one folder per key, holding the engines and their manifest.

The key hashes everything an engine depends on:
- the graph, identified by what determines it: the model class and config, the torch/transformers versions and
  the source of this package (capture, passes, converters), so a cache hit needs no export;
- the weights, by content: every parameter and buffer's bytes (BLAKE2b, ~1 GB/s, tied weights hashed once),
  so changing one weight changes the key;
- the build settings and the TensorRT flavour and version.
Entries are written to a staging folder and renamed into place, so an interrupted build leaves no half entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

import trtllm_compile

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1  # bump when the cache layout or manifest changes meaning


def default_cache_dir() -> Path:
    from trtllm_compile.models import cache_dir

    return cache_dir() / "engines"


@functools.cache
def source_digest() -> str:
    """Hash of this package's Python sources, taken once per process: the code that runs is the code imported,
    and a change to any pass or converter can change an engine."""
    digest = hashlib.blake2b(digest_size=16)
    root = Path(trtllm_compile.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """Content hash of every parameter and buffer (names, dtypes, shapes, bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    seen: set[tuple[int, int]] = set()
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, tensor in tensors:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        identity = (tensor.data_ptr(), tensor.numel())
        if identity in seen:  # tied weights: the name above records the tie, the bytes are hashed once
            continue
        seen.add(identity)
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(data.view(torch.uint8).numpy().data if data.numel() else b"")
    return digest.hexdigest()


def graph_identity(model: torch.nn.Module) -> dict:
    import transformers

    config = getattr(model, "config", None)
    return {
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": json.loads(config.to_json_string(use_diff=False)) if config is not None else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "source": source_digest(),
    }


def cache_key(model: torch.nn.Module, settings: dict, tensorrt_version: str) -> str:
    payload = {
        "format": FORMAT_VERSION,
        "graph": graph_identity(model),
        "weights": weights_digest(model),
        "settings": settings,
        "tensorrt": tensorrt_version,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:32]


class EngineCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, key: str) -> Path:
        return self.root / key

    def lookup(self, key: str) -> dict | None:
        """The manifest of a complete entry, else None."""
        manifest_path = self.entry(key) / MANIFEST
        if not manifest_path.exists():
            return None
        manifest = json.loads(manifest_path.read_text())
        if not all((self.entry(key) / engine["file"]).exists() for engine in manifest["engines"].values()):
            logger.warning("engine cache entry %s is incomplete; rebuilding", key)
            return None
        return manifest

    def staging(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".staging-", dir=self.root))

    def commit(self, staging: Path, key: str) -> Path:
        """Move a finished staging folder into place (another process may have won the race: keep theirs)."""
        final = self.entry(key)
        try:
            staging.rename(final)
        except OSError:
            if not (final / MANIFEST).exists():
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return final

    @property
    def timing_cache_path(self) -> Path:
        return self.root / "timing.cache"


def load_timing_cache(config, path: Path):
    """Attach the shared timing cache (full TensorRT; RTX times nothing at build time)."""
    data = path.read_bytes() if path.exists() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(path, bytes(cache.serialize()))


def replace_file(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all: another file first, renamed over it (a reader never sees half)."""
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
