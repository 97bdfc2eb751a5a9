"""A Hugging Face `generate()` on the engine: same arguments, same output tensor, so existing code swaps it in.

Rows of a padded batch become independent requests (padding stripped by `attention_mask`), run batched in
flight, and come back as HF lays them out: the input as given, then the new tokens, padded with
`pad_token_id` after a row finishes (in a `GenerateDecoderOnlyOutput` with `return_dict_in_generate=True`).
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput

from trtllm_compile.runtime.engine import LLMEngine
from trtllm_compile.runtime.sampling import SamplingParams

_UNSUPPORTED = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "assistant_model": None,
    # The engine returns tokens, not per-step scores or activations
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
}


def sampling_params_from(config: GenerationConfig, prompt_len: int) -> SamplingParams:
    for name, default in _UNSUPPORTED.items():
        if getattr(config, name, default) not in (default, None):
            raise NotImplementedError(
                f"generate({name}=...) is not supported by the trtllm runtime; use the model's own generate() for it"
            )
    max_new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - prompt_len
    eos = config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    return SamplingParams(
        max_tokens=max(1, max_new),
        temperature=config.temperature if config.do_sample else 0.0,
        top_k=(config.top_k or 0) if config.do_sample else 0,
        top_p=(config.top_p or 1.0) if config.do_sample else 1.0,
        repetition_penalty=config.repetition_penalty or 1.0,
        stop_token_ids=eos_ids,
    )


def generate(
    engine: LLMEngine,
    base_config: GenerationConfig,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    streamer=None,
    **kwargs,
) -> torch.Tensor | GenerateDecoderOnlyOutput:
    if input_ids.dim() != 2 or input_ids.is_floating_point() or input_ids.is_complex():
        raise ValueError(
            f"input_ids must be a [batch, length] tensor of token ids, got {input_ids.dtype} {list(input_ids.shape)}"
        )
    config = GenerationConfig.from_dict(
        {**base_config.to_dict(), **(generation_config or GenerationConfig()).to_diff_dict()}
    )
    unused = config.update(**kwargs)
    if unused:
        raise TypeError(f"generate() got arguments the trtllm runtime does not know: {sorted(unused)}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if streamer is not None and input_ids.shape[0] != 1:
        raise ValueError("a streamer needs a batch of one prompt (as in Hugging Face generate)")
    params = sampling_params_from(config, input_ids.shape[1])
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True)]
    if streamer is not None:
        streamer.put(input_ids.cpu())
    stream = None if streamer is None else lambda output: streamer.put(torch.tensor(output.token_ids[-1:]))
    outputs = [output.token_ids for output in engine.run_to_completion(((row, params) for row in rows), stream)]
    if streamer is not None:
        streamer.end()
    pad = config.pad_token_id if config.pad_token_id is not None else (params.stop_token_ids or [0])[0]
    width = max(len(tokens) for tokens in outputs)
    new = torch.full((len(rows), width), pad, dtype=input_ids.dtype)
    for row, tokens in enumerate(outputs):
        new[row, : len(tokens)] = torch.tensor(tokens, dtype=input_ids.dtype)
    sequences = torch.cat([input_ids, new.to(input_ids.device)], dim=1)
    return GenerateDecoderOnlyOutput(sequences=sequences) if config.return_dict_in_generate else sequences
