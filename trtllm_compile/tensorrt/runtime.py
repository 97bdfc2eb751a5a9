"""Run the built engines with torch tensors: `TensorRTEngine` (one engine: device pointers, a CUDA stream,
`execute_async_v3`) and `TensorRTGenerator` (prefill + decode engines, the KV cache, a greedy `generate`).

Nothing here can run on this project's CPU CI or its Hopper GPUs (tensorrt_rtx refuses compute capability 9.0):
`runtime_unavailable_reason()` says why, `select_target` turns that into an error or a fallback, and the tests that
execute engines are GPU-marked. Execution is never imitated.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from trtllm_compile.tensorrt import trt as flavour

logger = logging.getLogger(__name__)

TARGETS = ("auto", "tensorrt", "cuda", "reference")


class TensorRTRuntimeUnavailableError(RuntimeError):
    """TensorRT engines cannot execute on this machine."""


def runtime_unavailable_reason() -> str | None:
    """Why engines cannot execute here (no TensorRT, no CUDA GPU, a GPU the flavour refuses), or None."""
    if flavour.trt is None:
        return f"TensorRT is not installed (run `{flavour.INSTALL_HINT}`)"
    if not torch.cuda.is_available():
        return "no CUDA GPU is available to run TensorRT engines on"
    capability = torch.cuda.get_device_capability()
    if capability in flavour.runtime_blocked_sms():
        major, minor = capability
        return (
            f"{flavour.FLAVOUR} cannot run engines on compute capability {major}.{minor} "
            f"({torch.cuda.get_device_name()}); it supports {', '.join(flavour.supported_sms())}"
        )
    return None


def select_target(target: str) -> str:
    """ "tensorrt" where engines can run; "auto" falls back to "cuda" (or "reference" without a GPU) with a warning
    saying why; "tensorrt" where they cannot raises that reason."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {TARGETS}")
    if target in ("cuda", "reference"):
        return target
    reason = runtime_unavailable_reason()
    if reason is None:
        return "tensorrt"
    if target == "tensorrt":
        raise TensorRTRuntimeUnavailableError(
            f"target='tensorrt' cannot run here: {reason}. Use target='auto' to fall back to the CUDA target, "
            "or build engines here and run them on a supported GPU"
        )
    fallback = "cuda" if torch.cuda.is_available() else "reference"
    warnings.warn(f"TensorRT engines cannot run here ({reason}); using the {fallback} target", stacklevel=2)
    return fallback


def _require_runtime() -> None:
    reason = runtime_unavailable_reason()
    if reason is not None:
        raise TensorRTRuntimeUnavailableError(f"cannot execute TensorRT engines: {reason}")


class TensorRTEngine:
    """One deserialized engine, called with a dict of CUDA tensors; outputs that alias inputs are written in place."""

    def __init__(self, path_or_bytes: str | Path | bytes, aliases: dict[str, str] | None = None):
        _require_runtime()
        trt = flavour.require_trt()
        data = path_or_bytes if isinstance(path_or_bytes, bytes) else Path(path_or_bytes).read_bytes()
        self.runtime = trt.Runtime(flavour.trt_logger())
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (see the 'trtllm_compile.tensorrt' log)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.aliases = aliases or {}  # output name -> the input it updates in place

    def __call__(self, inputs: dict[str, torch.Tensor], stream: torch.cuda.Stream | None = None):
        from trtllm_compile.tensorrt.impl.tensors import torch_dtype

        stream = stream or torch.cuda.current_stream()
        for name in self.input_names:
            tensor = inputs[name].contiguous()
            inputs[name] = tensor
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.output_names:
            if name in self.aliases:
                outputs[name] = inputs[self.aliases[name]]
            else:
                shape = tuple(self.context.get_tensor_shape(name))
                dtype = torch_dtype(self.engine.get_tensor_dtype(name))
                outputs[name] = torch.empty(shape, dtype=dtype, device="cuda")
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT engine execution failed (see the 'trtllm_compile.tensorrt' log)")
        return outputs


class TensorRTGenerator:
    """Greedy generation with the prefill and decode engines of a `build()` (or its output folder)."""

    def __init__(self, built):
        from trtllm_compile.tensorrt.build import BuildResult, load

        _require_runtime()
        built = built if isinstance(built, BuildResult) else load(built)
        self.manifest = built.manifest
        self.engines = {}
        for step in ("prefill", "decode"):
            info = built.engines[step]
            aliases = {o["name"]: o["aliases"] for o in info.outputs if "aliases" in o}
            self.engines[step] = TensorRTEngine(info.path, aliases)
        self.cache_specs = [i for i in built.engines["decode"].inputs if i["name"].startswith(("k_cache_", "v_cache_"))]
        settings = self.manifest["settings"]
        self.max_batch_size, self.max_seq_len = settings["max_batch_size"], settings["max_seq_len"]
        self.max_num_tokens = settings["max_num_tokens"]
        self.dtype = getattr(torch, settings["dtype"])

    def _new_cache(self, batch: int) -> dict[str, torch.Tensor]:
        return {
            spec["name"]: torch.zeros((batch, *spec["shape"][1:]), dtype=self.dtype, device="cuda")
            for spec in self.cache_specs
        }

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int,
        attention_mask: torch.Tensor | None = None,
        eos_token_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy decoding; prompts of different lengths come padded with an `attention_mask` (either side)."""
        input_ids = input_ids.cuda()
        batch = input_ids.shape[0]
        if batch > self.max_batch_size:
            raise ValueError(f"batch {batch} exceeds the engines' max_batch_size {self.max_batch_size}")
        mask = (
            attention_mask.cuda().bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
        )
        lengths = mask.sum(1)
        prompts = [row[m] for row, m in zip(input_ids, mask, strict=True)]
        width = int(lengths.max())
        if width > self.max_num_tokens:
            raise ValueError(
                f"a {width}-token prompt exceeds the prefill engine's max_num_tokens {self.max_num_tokens}"
            )
        if width + max_new_tokens > self.max_seq_len:
            raise ValueError(f"{width} prompt + {max_new_tokens} new tokens exceed max_seq_len {self.max_seq_len}")
        ids = torch.zeros(batch, width, dtype=torch.long, device="cuda")  # right-padded: causal attention never
        for i, prompt in enumerate(prompts):  # lets a real token see the padding after it
            ids[i, : len(prompt)] = prompt
        cache = self._new_cache(batch)
        positions = torch.arange(width, device="cuda").expand(batch, width).contiguous()
        zeros = torch.zeros(batch, dtype=torch.int32, device="cuda")
        out = self.engines["prefill"]({"input_ids": ids, "position_ids": positions, "cache_lengths": zeros, **cache})
        next_token = out["logits"][torch.arange(batch), lengths - 1].argmax(-1)
        generated = [next_token]
        cache_lengths = lengths.to(torch.int32)
        for _ in range(max_new_tokens - 1):
            step_inputs = {
                "input_ids": next_token[:, None],
                "position_ids": cache_lengths[:, None].long(),
                "cache_lengths": cache_lengths,
                **cache,
            }
            out = self.engines["decode"](step_inputs)
            next_token = out["logits"][:, -1].argmax(-1)
            generated.append(next_token)
            cache_lengths = cache_lengths + 1
            if eos_token_id is not None and bool((torch.stack(generated, 1) == eos_token_id).any(1).all()):
                break
        new_tokens = torch.stack(generated, 1)
        return torch.cat([input_ids, new_tokens], 1)
