"""`LLM`: offline and streaming generation on the in-flight batching engine."""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Iterator, Sequence

import torch

from trtllm_compile.models import load_model
from trtllm_compile.runtime.engine import EngineConfig, LLMEngine, RequestOutput
from trtllm_compile.runtime.sampling import SamplingParams

logger = logging.getLogger(__name__)

Prompt = str | list[int]


class LLM:
    """`LLM(model_or_path=None, tokenizer=None, **config)`: an nn.Module, a local HF folder, or nothing for the
    embedded default model; `config` holds `EngineConfig` fields (max_batch_size, max_num_tokens, ...).

    With `tensor_parallel_size=N` this process is rank 0 of N and starts the others (or joins the group a
    launcher such as torchrun made). A folder is then loaded onto the host by every rank, each moving only its
    shard to its device; a module is shared with the spawned ranks; a picklable zero-argument factory is called
    by each rank. Close the LLM (or use it as a context manager) to stop the ranks.
    """

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | os.PathLike | None = None,
        tokenizer=None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **config,
    ):
        known = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"unknown LLM option(s) {unknown}; valid options are {sorted(known)}")
        engine_config = EngineConfig(**config)
        parallel = engine_config.tensor_parallel_size > 1
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        source = None
        if isinstance(model_or_path, torch.nn.Module):
            model = model_or_path
        elif parallel and callable(model_or_path):
            model, source = model_or_path(), model_or_path
        else:
            dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
            path = os.fspath(model_or_path) if model_or_path is not None else None
            # Tensor parallel: the full model stays on the host; each rank moves only its shard to its device.
            model, loaded_tokenizer = load_model(path, dtype=dtype, device="cpu" if parallel else device)
            tokenizer = tokenizer or loaded_tokenizer
            if parallel:
                from trtllm_compile.parallel.launch import load_on_cpu

                source = functools.partial(load_on_cpu, path, dtype)
        device_type = torch.device(device).type
        self.engine = LLMEngine(model.eval(), tokenizer, engine_config, model_source=source, device_type=device_type)
        self.tokenizer = tokenizer

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """One finished output per prompt, in prompt order; all prompts run batched in flight."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params or SamplingParams()
        params = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
        return self.engine.run_to_completion(zip(prompts, params, strict=True))

    def generate_stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yield the request's output after every step that advanced it (`new_text` holds the delta)."""
        request_id = self.engine.add_request(prompt, sampling_params)
        finished = False
        try:
            while not finished:
                for output in self.engine.step():
                    if output.request_id == request_id:
                        finished = output.finished
                        yield output
        finally:
            if not finished:
                self.engine.abort(request_id)
