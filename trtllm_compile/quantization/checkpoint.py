"""Quantized checkpoints: safetensors for every tensor, JSON for everything else; loading never unpickles.

A checkpoint folder holds the Hugging Face `config.json` (and generation config, tokenizer when given),
`model.safetensors` (every parameter and buffer, quantized or not, each shared tensor once) and
`quant_config.json`: the QuantConfig options, the layout of each QuantLinear, the attention modules with FP8 KV
scales, and which tensor names alias one another (tied embeddings). Loading builds the model skeleton on the meta
device, swaps in empty QuantLinears of the recorded layouts, and assigns the stored tensors.

Saving writes a staging folder beside the target and renames it into place: an interrupted save leaves the
folder as it was, and a folder that is not a quantized checkpoint (the source model's, say) is never written into.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from trtllm_compile.quantization.config import QuantConfig
from trtllm_compile.quantization.kv_cache import PREFIX, implementation_for
from trtllm_compile.quantization.modules import QuantLinear

logger = logging.getLogger(__name__)

QUANT_CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


def _all_tensors(model: nn.Module):
    return itertools.chain(model.named_parameters(remove_duplicate=False), model.named_buffers(remove_duplicate=False))


def save_quantized(model: nn.Module, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write `model` (quantized by `trtllm_compile.quantize`) to `out_dir`; returns the folder."""
    config = getattr(model, "trtllm_quant_config", None)
    if config is None:
        raise ValueError("the model is not quantized: call trtllm_compile.quantize(model, ...) before saving it")
    out = check_output_folder(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        _write(model, config, staging, tokenizer)
        if out.exists():  # a previous checkpoint (or an empty folder): moved aside, then removed
            previous = staging.with_suffix(".previous")
            out.rename(previous)
            staging.rename(out)
            shutil.rmtree(previous)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved %s model to %s", config.format or "kv-only", out)
    return out


def check_output_folder(out_dir: str | os.PathLike) -> Path:
    """`out_dir` as a Path if a checkpoint may be saved there: new, empty, or a quantized checkpoint already."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file; give a folder for the checkpoint")
    if out.is_dir() and any(out.iterdir()) and not is_quantized_checkpoint(out):
        raise FileExistsError(
            f"{out} holds files and is not a quantized checkpoint (a model folder?); give a new or empty folder"
        )
    return out


def _write(model: nn.Module, config: QuantConfig, out: Path, tokenizer) -> None:
    tensors, aliases, seen = {}, {}, {}
    for name, tensor in _all_tensors(model):
        if id(tensor) in seen:
            aliases[name] = seen[id(tensor)]
            continue
        seen[id(tensor)] = name
        tensors[name] = tensor.detach().cpu().contiguous()
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    attn = model.config._attn_implementation
    layout = {
        "version": FORMAT_VERSION,
        "quant_config": config.to_json(),
        "dtype": str(model.dtype).removeprefix("torch."),
        "attn_implementation": attn.removeprefix(PREFIX),
        "quant_linears": {n: m.spec() for n, m in model.named_modules() if isinstance(m, QuantLinear)},
        "fp8_kv_modules": [
            n for n, m in model.named_modules() if isinstance(getattr(m, "k_scale", None), nn.Parameter)
        ],
        "aliases": aliases,
    }
    (out / QUANT_CONFIG_FILE).write_text(json.dumps(layout, indent=1))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def is_quantized_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / QUANT_CONFIG_FILE).exists()


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        old = owner._parameters[attr]
        owner._parameters[attr] = nn.Parameter(tensor, requires_grad=bool(old is not None and old.requires_grad))
    elif attr in owner._buffers:
        owner._buffers[attr] = tensor
    else:
        raise KeyError(f"{name} in the checkpoint has no place in the model; was it saved by another version?")


def load_quantized(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by `save_quantized` from its safetensors and JSON files alone."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    folder = Path(path)
    if not is_quantized_checkpoint(folder):
        raise FileNotFoundError(f"{folder} has no {QUANT_CONFIG_FILE}; write one with save_quantized(model, dir)")
    layout = json.loads((folder / QUANT_CONFIG_FILE).read_text())
    if layout.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder} holds checkpoint format {layout.get('version')}, this reader knows {FORMAT_VERSION}"
        )
    hf_config = AutoConfig.from_pretrained(folder, local_files_only=True)
    dtype = getattr(torch, layout["dtype"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            hf_config, dtype=dtype, attn_implementation=layout["attn_implementation"]
        )
        for name, spec in layout["quant_linears"].items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, QuantLinear.from_spec(spec))
        for name in layout["fp8_kv_modules"]:
            attention = model.get_submodule(name)
            attention.k_scale = nn.Parameter(torch.empty(()), requires_grad=False)
            attention.v_scale = nn.Parameter(torch.empty(()), requires_grad=False)
    for name, tensor in load_file(folder / WEIGHTS_FILE, device=str(device)).items():
        _assign(model, name, tensor)
    for alias, target in layout["aliases"].items():
        owner_name, _, attr = alias.rpartition(".")
        owner = model.get_submodule(owner_name)
        target_tensor = model.get_parameter(target) if attr in owner._parameters else model.get_buffer(target)
        (owner._parameters if attr in owner._parameters else owner._buffers)[attr] = target_tensor
    missing = [name for name, t in _all_tensors(model) if t.is_meta]
    if missing:
        raise ValueError(f"{folder} lacks tensors {missing[:5]}{'...' if len(missing) > 5 else ''}; re-save it")
    if layout["fp8_kv_modules"]:
        model.set_attn_implementation(implementation_for(layout["attn_implementation"]))
    if (folder / "generation_config.json").exists():
        model.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
    model.trtllm_quant_config = QuantConfig.from_json(layout["quant_config"])
    return model.eval()
