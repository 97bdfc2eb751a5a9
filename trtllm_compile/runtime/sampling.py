"""Per-request sampling parameters and a batched sampler with Hugging Face semantics.

Each row of the batch has its own parameters. The order matches `transformers` generate: repetition
penalty, then temperature, then top-k, then top-p, then a draw. Temperature 0 means greedy (argmax).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import Tensor

from trtllm_compile.kernels import TRITON_AVAILABLE

logger = logging.getLogger(__name__)


@dataclass
class SamplingParams:
    """How to pick tokens for one request. `stop` strings are matched by the detokenizing layer."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)  # a single string is one stop string, as in OpenAI's API
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):  # not its characters, each a stop string
            self.stop = [self.stop]
        if "" in self.stop:
            raise ValueError("stop strings must be non-empty (an empty one would end every request at once)")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}")
        if self.seed is not None and self.seed < 0:
            raise ValueError(f"seed must be >= 0 or None, got {self.seed}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A generator seeded from `params.seed`, or None to draw from the global RNG."""
    if params.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(params.seed)


def apply_repetition_penalty(logits: Tensor, penalties: list[float], prev_tokens: list[list[int]]) -> Tensor:
    """Penalize each row's already-seen tokens: positive logits divided, negative multiplied (as HF)."""
    num_rows, vocab = logits.shape
    width = max((len(tokens) for tokens in prev_tokens), default=0)
    # Pad with an extra column `vocab` that absorbs padding and out-of-vocab ids, then drop it.
    token_ids = torch.full((num_rows, max(width, 1)), vocab, dtype=torch.int64)
    for row, tokens in enumerate(prev_tokens):
        token_ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.int64)
    token_ids = token_ids.clamp(0, vocab).to(logits.device)
    seen = torch.zeros(num_rows, vocab + 1, dtype=torch.bool, device=logits.device)
    seen = seen.scatter(1, token_ids, True)[:, :vocab]
    penalty = _per_row(penalties, logits.device, logits.dtype)[:, None]
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalized, logits)


def apply_top_k(logits: Tensor, top_k: list[int]) -> Tensor:
    """Keep each row's `top_k` largest logits (and ties with the k-th, as HF); 0 keeps everything."""
    vocab = logits.shape[-1]
    k = _per_row([vocab if k <= 0 else min(k, vocab) for k in top_k], logits.device)
    kth_largest = logits.sort(dim=-1, descending=True).values.gather(1, (k - 1)[:, None])
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def apply_top_p(logits: Tensor, top_p: list[float]) -> Tensor:
    """Keep each row's smallest set of tokens whose probability sums to >= top_p (at least one)."""
    sorted_logits, sorted_ids = logits.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # `1 - p` in Python double, then float32, which is exactly what HF's scalar comparison does.
    threshold = _per_row([1.0 - p for p in top_p], logits.device, cumulative.dtype)
    remove_sorted = cumulative <= threshold[:, None]
    remove_sorted[:, -1] = False
    remove_sorted &= _per_row([p < 1.0 for p in top_p], logits.device)[:, None]
    remove = remove_sorted.scatter(1, sorted_ids, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample(
    logits: Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None] | None = None,
    prev_tokens: list[list[int]] | None = None,
) -> Tensor:
    """Pick one token per row of `logits` [N, V]; returns int64 [N].

    `generators[i]` (None = global RNG) drives row i's draw, so a seeded generator makes it reproducible.
    `prev_tokens[i]` (prompt + output so far) is only needed for rows with a repetition penalty.
    """
    num_rows = logits.shape[0]
    generators = generators if generators is not None else [None] * num_rows
    if not len(params) == len(generators) == num_rows:
        raise ValueError(f"{num_rows} logit rows but {len(params)} params and {len(generators)} generators")
    penalties = [p.repetition_penalty for p in params]
    if any(penalty != 1.0 for penalty in penalties):
        if prev_tokens is None or len(prev_tokens) != num_rows:
            raise ValueError("repetition_penalty needs prev_tokens (prompt + output ids) for every row")
        logits = apply_repetition_penalty(logits.float(), penalties, prev_tokens)

    greedy_rows = [i for i, p in enumerate(params) if p.is_greedy]
    random_rows = [i for i, p in enumerate(params) if not p.is_greedy]
    # One mode for every row: no row indexing, whose host-made indices would wait for the device
    if not random_rows:
        return argmax(logits)  # in the logits' dtype: the index of their exact float32 cast
    logits = logits.float()
    if not greedy_rows:
        return _draw(_filtered_probs(logits, params), generators)
    tokens = torch.empty(num_rows, dtype=torch.int64, device=logits.device)
    tokens[greedy_rows] = argmax(logits[greedy_rows])
    probs = _filtered_probs(logits[random_rows], [params[i] for i in random_rows])
    tokens[random_rows] = _draw(probs, [generators[i] for i in random_rows])
    return tokens


def argmax(logits: Tensor, out: Tensor | None = None) -> Tensor:
    """Each row's first largest logit, as `logits.argmax(-1)` (into `out`, int64 [N], if given): on a GPU,
    kernels/sampling.py's kernel."""
    if logits.is_cuda and TRITON_AVAILABLE:
        from trtllm_compile.kernels import sampling

        return sampling.argmax(logits.contiguous(), out=out)
    return torch.argmax(logits, dim=-1, out=out)


def _per_row(values: list, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
    """A per-row parameter on the device, copied without waiting for the device's queued work."""
    return torch.tensor(values, dtype=dtype).to(device, non_blocking=True)


def _filtered_probs(logits: Tensor, params: list[SamplingParams]) -> Tensor:
    temperature = _per_row([p.temperature for p in params], logits.device)[:, None]
    logits = logits / temperature
    if any(p.top_k > 0 for p in params):
        logits = apply_top_k(logits, [p.top_k for p in params])
    if any(p.top_p < 1.0 for p in params):
        logits = apply_top_p(logits, [p.top_p for p in params])
    return logits.softmax(dim=-1)


def _draw(probs: Tensor, generators: list[torch.Generator | None]) -> Tensor:
    """One multinomial draw per row: rows on the global RNG in one call, seeded rows one by one."""
    unseeded = [i for i, g in enumerate(generators) if g is None]
    if len(unseeded) == len(generators):
        return torch.multinomial(probs, 1).squeeze(1)
    tokens = torch.empty(probs.shape[0], dtype=torch.int64, device=probs.device)
    if unseeded:
        tokens[unseeded] = torch.multinomial(probs[unseeded], 1).squeeze(1)
    for row, generator in enumerate(generators):
        if generator is not None:
            tokens[row] = torch.multinomial(probs[row], 1, generator=generator)[0]
    return tokens
