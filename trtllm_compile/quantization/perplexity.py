"""Perplexity over fixed, non-overlapping windows of a text: the accuracy check of every quantization format."""

from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from trtllm_compile.ops.quant import dequantized_weight_cache
from trtllm_compile.quantization.text import token_windows

logger = logging.getLogger(__name__)


@torch.no_grad()
def evaluate_perplexity(
    model: torch.nn.Module,
    tokenizer,
    text: str,
    window: int = 512,
    max_windows: int | None = None,
    *,
    batch_size: int = 1,
    progress: bool = True,
) -> float:
    """exp(mean next-token NLL) over `text` cut into non-overlapping windows of `window` tokens.

    Each window is scored on its own (no context carried over), predicting tokens 2..window from the ones
    before them; the mean runs over every predicted token of every window. `max_windows` caps the count (the
    first windows of the text), so a fixed setting gives comparable numbers across models.
    """
    windows = token_windows(tokenizer, text, window, max_windows)
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    # On CPU the quantized ops run their references: dequantize each weight once for the whole loop.
    with dequantized_weight_cache() if device.type == "cpu" else contextlib.nullcontext():
        for batch in tqdm(windows.split(batch_size), desc="perplexity", unit="batch", disable=not progress):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            targets = batch[:, 1:].reshape(-1)
            total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets, reduction="sum").item()
            total_tokens += targets.numel()
    perplexity = math.exp(total_nll / total_tokens)
    logger.info("perplexity %.4f over %d windows of %d tokens", perplexity, len(windows), window)
    return perplexity
