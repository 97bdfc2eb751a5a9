"""Calibration: run text through the model and record what quantization needs to know about its activations.

Observers sit on the input of every `nn.Linear` (a forward pre-hook) and on K/V (the FP8-KV attention wrapper,
see kv_cache.py). Per linear input they keep the per-channel max |x| (per-tensor amax is its max), the
per-channel mean |x| (AWQ's activation salience), a random sample of token rows (AWQ's search set) and, when
asked, the Gram matrix x^T x summed over the tokens (GPTQ's H).

They also record the model's structure as the data flows: linears that read the *same tensor object* share one
input (Q/K/V, gate/up), so they form a group with one set of statistics and must share any smoothing scale; and a
group whose input object is a norm module's output can fold that scale into the norm's weight.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from trtllm_compile.quantization.kv_cache import observing_kv
from trtllm_compile.quantization.text import token_windows

logger = logging.getLogger(__name__)


@dataclass
class InputStats:
    """Statistics of one linear input over all calibration tokens."""

    channel_amax: torch.Tensor  # [K] max |x| per input channel
    abs_sum: torch.Tensor  # [K] sum of |x| per channel (float64)
    num_tokens: int = 0
    sample_chunks: list[torch.Tensor] = field(default_factory=list, repr=False)
    gram: torch.Tensor | None = field(default=None, repr=False)  # [K, K] sum of x^T x, when calibrated with grams
    first_rows: list[torch.Tensor] = field(default_factory=list, repr=False)  # each window's first token, likewise

    @property
    def amax(self) -> float:
        return self.channel_amax.max().item()

    @property
    def mean_abs(self) -> torch.Tensor:
        return (self.abs_sum / max(self.num_tokens, 1)).float()

    @property
    def samples(self) -> torch.Tensor:
        """[n, K] float32 token rows kept for the AWQ search (n = 0 when calibrated with samples=0)."""
        if len(self.sample_chunks) != 1:
            width = self.channel_amax.numel()
            empty = torch.empty(0, width, device=self.channel_amax.device)
            self.sample_chunks = [torch.cat(self.sample_chunks) if self.sample_chunks else empty]
        return self.sample_chunks[0]

    def hessian(self, first_position_weight: float = 1.0) -> torch.Tensor:
        """GPTQ's H [K, K]: the sum of x^T x over the calibration tokens, the first position's counted
        `first_position_weight` times."""
        if self.gram is None:
            raise ValueError("GPTQ needs each linear input's Gram matrix: calibrate with grams=True")
        if first_position_weight == 1 or not self.first_rows:
            return self.gram
        first = torch.cat(self.first_rows)
        return self.gram + (first_position_weight - 1) * (first.T @ first)

    def observe(self, rows: torch.Tensor, sample_index: torch.Tensor | None, first: torch.Tensor | None) -> None:
        """Add the token rows [n, K] of one batch (`first`: those at its first position, for the Gram matrix)."""
        if self.gram is not None:
            self.gram.addmm_(rows.T, rows)
        if first is not None:
            self.first_rows.append(first.clone())
        magnitude = rows.abs()
        torch.maximum(self.channel_amax, magnitude.amax(0), out=self.channel_amax)
        self.abs_sum += magnitude.sum(0, dtype=torch.float64)
        self.num_tokens += rows.shape[0]
        if sample_index is not None:
            self.sample_chunks.append(rows[sample_index].clone())


@dataclass
class Calibration:
    """What a calibration run saw, keyed by module name.

    groups: group key (its first linear) -> the linears reading that same input, in call order.
    inputs: group key -> statistics of the shared input.
    norms: group key -> name of the norm module whose output is the group's input (foldable smoothing).
    kv_amax: attention module name -> (max |K|, max |V|) over the calibration tokens, after RoPE.
    windows, batch_size: the token windows [n, window] that were run (on the CPU), and how many at a time: GPTQ
        runs them again, one decoder layer at a time, when the inputs have no Gram matrices (see apply.py).
    """

    groups: dict[str, list[str]] = field(default_factory=dict)
    inputs: dict[str, InputStats] = field(default_factory=dict)
    norms: dict[str, str] = field(default_factory=dict)
    kv_amax: dict[str, tuple[float, float]] = field(default_factory=dict)
    num_tokens: int = 0
    windows: torch.Tensor | None = field(default=None, repr=False)
    batch_size: int = 1

    def group_key(self, linear_name: str) -> str | None:
        for key, members in self.groups.items():
            if linear_name in members:
                return key
        return None

    def stats(self, linear_name: str) -> InputStats | None:
        key = self.group_key(linear_name)
        return self.inputs[key] if key is not None else None


class _Observers:
    """The hooks of one calibration run; `batch_done()` drops the per-batch identity tables."""

    def __init__(
        self, model: nn.Module, calibration: Calibration, rows_per_batch: int, seed: int, grams: bool | Collection[str]
    ):
        self.calibration = calibration
        self.grams = grams
        self.rows_per_batch = rows_per_batch
        self.generator = torch.Generator().manual_seed(seed)
        self.names = {id(module): name for name, module in model.named_modules()}
        self.input_key: dict[int, str] = {}  # id(tensor) -> group key, this batch only
        self.norm_output: dict[int, str] = {}  # id(tensor) -> norm module name, this batch only
        self.alive: list[torch.Tensor] = []  # keeps this batch's ids from being reused
        self.sample_index: torch.Tensor | None = None
        self.handles = []
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                self.handles.append(module.register_forward_pre_hook(self._linear_hook(name)))
            elif type(module).__name__.endswith(("RMSNorm", "LayerNorm")):
                self.handles.append(module.register_forward_hook(self._norm_hook(name)))

    def _linear_hook(self, name: str):
        def hook(module, args):
            x = args[0]
            key = self.input_key.get(id(x))
            calibration = self.calibration
            if key is None:
                key = calibration.group_key(name) or name
                self.input_key[id(x)] = key
                self.alive.append(x)
                rows = x.detach().reshape(-1, x.shape[-1]).float()
                if key not in calibration.inputs:
                    width = rows.shape[1]
                    zeros = dict(device=rows.device)  # statistics stay where the model runs: no host sync per hook
                    calibration.inputs[key] = InputStats(
                        torch.zeros(width, **zeros), torch.zeros(width, dtype=torch.float64, **zeros)
                    )
                    if self._wants_gram(key):
                        calibration.inputs[key].gram = torch.zeros(width, width, **zeros)
                    calibration.groups[key] = []
                    if id(x) in self.norm_output:
                        calibration.norms[key] = self.norm_output[id(x)]
                stats = calibration.inputs[key]
                first = x.detach()[:, 0].float() if stats.gram is not None and x.dim() == 3 else None  # [b, seq, K]
                stats.observe(rows, self._samples(rows.shape[0]), first)
            if name not in calibration.groups[key]:
                calibration.groups[key].append(name)

        return hook

    def _wants_gram(self, key: str) -> bool:
        return self.grams if isinstance(self.grams, bool) else key in self.grams

    def _norm_hook(self, name: str):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                self.norm_output[id(output)] = name
                self.alive.append(output)

        return hook

    def _samples(self, num_rows: int) -> torch.Tensor | None:
        if self.rows_per_batch == 0:
            return None
        if self.sample_index is None or self.sample_index.max() >= num_rows:
            count = min(self.rows_per_batch, num_rows)
            self.sample_index = torch.randperm(num_rows, generator=self.generator)[:count]
        return self.sample_index

    def observe_kv(self, module: nn.Module, key: torch.Tensor, value: torch.Tensor) -> None:
        name = self.names[id(module)]
        k_amax, v_amax = key.detach().abs().max().item(), value.detach().abs().max().item()
        old_k, old_v = self.calibration.kv_amax.get(name, (0.0, 0.0))
        self.calibration.kv_amax[name] = (max(old_k, k_amax), max(old_v, v_amax))

    def batch_done(self) -> None:
        self.input_key.clear()
        self.norm_output.clear()
        self.alive.clear()
        self.sample_index = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class _ForwardStopped(Exception):
    """Raised by the `stop_after` module's hook: the rest of the forward has nothing to observe."""


def _stop_forward(module: nn.Module, args, output) -> None:
    raise _ForwardStopped


@torch.no_grad()
def calibrate(
    model: nn.Module,
    tokenizer=None,
    texts: str | list[str] | None = None,
    *,
    windows: torch.Tensor | None = None,
    window: int = 512,
    max_windows: int | None = 32,
    samples: int = 1024,
    kv_cache: bool = True,
    grams: bool | Collection[str] = False,
    batch_size: int = 1,
    seed: int = 0,
    stop_after: str | None = None,
    progress: bool = True,
) -> Calibration:
    """Run calibration text through `model` and return what its linear inputs and K/V looked like.

    Give `texts` and `tokenizer` (cut into `max_windows` windows of `window` tokens) or token `windows`
    [n, window] directly. `samples`: token rows kept per linear input for the AWQ search (0 to skip, which is
    all FP8 and SmoothQuant need). `kv_cache`: also observe K and V (for an FP8 KV cache). `grams`: also sum each
    linear input's Gram matrix x^T x (GPTQ's H): K^2 float32 per input on the model's device, about 0.4 GB for
    SmolLM2-135M and 22 GB for a 7B Llama; or only those of the inputs whose group key (first linear reading them)
    is in the collection given. `quantize` needs none of them: without, GPTQ sums them one layer at a time.
    `stop_after`: a module name; each forward ends there (what comes after it is not observed).
    """
    if windows is None:
        if texts is None or tokenizer is None:
            raise ValueError("calibration needs `texts` and a `tokenizer`, or token `windows`")
        windows = token_windows(tokenizer, texts, window, max_windows)
    device = next(model.parameters()).device
    batches = windows.split(batch_size)
    calibration = Calibration()
    observers = _Observers(model, calibration, math.ceil(samples / len(batches)) if samples else 0, seed, grams)
    kv = observing_kv(model, observers.observe_kv) if kv_cache else contextlib.nullcontext()
    if stop_after is not None:
        observers.handles.append(model.get_submodule(stop_after).register_forward_hook(_stop_forward))
    was_training = model.training
    model.eval()
    try:
        with kv:
            for batch in tqdm(batches, desc="calibrating", unit="batch", disable=not progress):
                with contextlib.suppress(_ForwardStopped):
                    model(input_ids=batch.to(device), use_cache=False)
                observers.batch_done()
    finally:
        observers.remove()
        model.train(was_training)
    calibration.num_tokens = windows.numel()
    calibration.windows, calibration.batch_size = windows.cpu(), batch_size
    logger.info(
        "calibrated on %d tokens: %d linear inputs (%d linears), %d attention layers",
        calibration.num_tokens,
        len(calibration.groups),
        sum(len(m) for m in calibration.groups.values()),
        len(calibration.kv_amax),
    )
    return calibration
