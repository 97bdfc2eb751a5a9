"""`LLM`: offline and streaming generation on the in-flight batching engine."""

from __future__ import annotations

import dataclasses
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
    embedded default model; `config` holds `EngineConfig` fields (max_batch_size, max_num_tokens, ...)."""

    def __init__(
        self,
        model_or_path: torch.nn.Module | str | os.PathLike | None = None,
        tokenizer=None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        **config,
    ):
        if isinstance(model_or_path, torch.nn.Module):
            model = model_or_path
        else:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
            model, loaded_tokenizer = load_model(model_or_path, dtype=dtype, device=device)
            tokenizer = tokenizer or loaded_tokenizer
        known = {f.name for f in dataclasses.fields(EngineConfig)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise TypeError(f"unknown LLM option(s) {unknown}; valid options are {sorted(known)}")
        self.engine = LLMEngine(model.eval(), tokenizer, EngineConfig(**config))
        self.tokenizer = tokenizer

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
        ids = [self.engine.add_request(prompt, p) for prompt, p in zip(prompts, params, strict=True)]
        final: dict[str, RequestOutput] = {}
        while len(final) < len(ids):
            for output in self.engine.step():
                if output.finished:
                    final[output.request_id] = output
        return [final[i] for i in ids]

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
