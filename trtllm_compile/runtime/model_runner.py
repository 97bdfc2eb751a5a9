"""Runs the step graph on a scheduled batch: builds the flat token row and attention metadata, owns the paged
KV cache, and replays CUDA graphs for decode-only steps (bucketed batch sizes) and for steps that prefill one
prompt (bucketed token counts).

A decode graph also takes its step's PENDING input tokens from the previous step's samples (`_samples`, where
every step's sampled tokens go) and computes the greedy tokens of its logits into the same buffer: between two
greedy decode steps the GPU runs the graph, one host-to-device copy of the inputs and one copy of the tokens
back, with no kernel launched from the host.
"""

from __future__ import annotations

import bisect
import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from trtllm_compile.config import CompileConfig
from trtllm_compile.kernels import TRITON_AVAILABLE, fixed_plans
from trtllm_compile.ops.library import bind_references
from trtllm_compile.runtime.kv_cache import (
    CPU_KV_CACHE_FRACTION,
    CPU_KV_CACHE_MAX_BYTES,
    available_host_memory,
    num_blocks_for_memory,
)
from trtllm_compile.runtime.sampling import argmax
from trtllm_compile.runtime.scheduler import PENDING, ScheduledBatch
from trtllm_compile.runtime.step_graph import build_step_graph

logger = logging.getLogger(__name__)

GRAPH_BATCH_STEP = 16  # decode batches are padded to a multiple of this (below it: to a power of two)
# A step prefilling one prompt of up to 2,048 tokens replays the graph of the next of these token counts: launched
# eagerly, such a step costs the host 57-86 ms whatever its length, against 5.3 ms of kernels at 128 tokens and 41
# at 2,048 (Llama-2-7B on an H200, docs/benchmarks.md run 101). Padding to a power of two adds at most as many
# tokens again.
PREFILL_GRAPH_TOKENS = (16, 32, 64, 128, 256, 512, 1024, 2048)


def cuda_graph_sizes(max_batch_size: int) -> list[int]:
    """The decode batch sizes that get a CUDA graph (each captured on first use): 1, 2, 4, 8, then every multiple
    of GRAPH_BATCH_STEP, and max_batch_size itself. Coarser buckets cost the padding rows' work: 414 sequences
    of a bf16 Llama-2-7B took 30.8-31.8 ms a decode step padded to 512 rows, 29.4-29.8 padded to 416 (H100,
    docs/benchmarks.md run 27)."""
    small = [b for b in (1, 2, 4, 8) if b < max_batch_size]
    return [*small, *range(GRAPH_BATCH_STEP, max_batch_size, GRAPH_BATCH_STEP), max_batch_size]


def next_bucket(sizes: list[int], n: int) -> int | None:
    """The smallest of the ascending `sizes` that holds `n` (the graph a step of n rows or tokens replays); None
    when none does."""
    index = bisect.bisect_left(sizes, n)
    return sizes[index] if index < len(sizes) else None


@dataclass
class PendingTokens:
    """Where a batch's `PENDING` input tokens are: the step in flight sampled them into `token_ids` (on the
    device), and `rows[i]` is the row of batch.sequences[i]'s token there (-1: its tokens are given)."""

    token_ids: torch.Tensor
    rows: list[int]


_ALIGNMENT = 16  # bytes: every packed input starts where any dtype's kernels may load it vectorized


def _copy_packed(
    arrays: tuple[np.ndarray, ...], device: torch.device, into: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Copy `arrays` to `device` in one transfer: their bytes back to back (aligned) in one host buffer, copied
    into `into` (a buffer of the same layout) or a new device buffer. Returns the buffer and a view of it for each
    array, of its dtype and shape."""
    offsets = np.cumsum([0] + [-(-a.nbytes // _ALIGNMENT) * _ALIGNMENT for a in arrays])
    host = np.zeros(int(offsets[-1]), dtype=np.uint8)
    for array, offset in zip(arrays, offsets[:-1], strict=True):
        host[offset : offset + array.nbytes] = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    if into is not None and into.numel() != host.nbytes:
        raise ValueError(f"a step's inputs take {host.nbytes} bytes, but the buffer given holds {into.numel()}")
    buffer = into if into is not None else torch.empty(host.nbytes, dtype=torch.uint8, device=device)
    buffer.copy_(torch.from_numpy(host), non_blocking=True)
    views = [
        buffer[offset : offset + array.nbytes].view(torch.from_numpy(array).dtype).view(array.shape)
        for array, offset in zip(arrays, offsets[:-1], strict=True)
    ]
    return buffer, views


def _parameters_on(model, device: torch.device) -> bool:
    """Whether `model` is a module whose parameters are on `device` (not a factory, not on the CPU)."""
    if not isinstance(model, torch.nn.Module):
        return False
    parameter = next(model.parameters(), None)
    return parameter is not None and parameter.device.type == device.type


def _cuda_kernels_ready() -> bool:
    """Register the Triton kernels; without them the reference paged attention syncs and cannot be captured."""
    from trtllm_compile.kernels import register_cuda_kernels

    if register_cuda_kernels():
        return True
    logger.warning("CUDA graphs disabled: the trtllm CUDA kernels need triton (pip install triton)")
    return False


class ModelRunner:
    prefill_graphs = True  # one-prompt prefill steps replay CUDA graphs too (where decode steps do)

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        device: torch.device | str | None = None,
        max_batch_size: int,
        max_num_tokens: int,
        max_seq_len: int,
        block_size: int = 16,
        num_blocks: int | None = None,
        gpu_memory_fraction: float = 0.9,
        cuda_graphs: bool = True,
        compile_config: CompileConfig | None = None,
    ):
        """`device`: where the step runs (default: where the model's parameters are)."""
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # tp_invariant: every step (and its CUDA-graph capture) runs the kernels' fixed plans
        self.tp_invariant = bool(compile_config and compile_config.tp_invariant)
        # What the graph derives from positions alone is tabulated over every position a sequence of max_seq_len
        # tokens meets (passes/tabulate_position_features.py), where the tables are computed by the device that
        # runs the steps: a CPU's vectorized cos may round a position otherwise than a GPU computing it per step.
        if self.device.type == "cuda" and _parameters_on(model, self.device):
            compile_config = dataclasses.replace(compile_config or CompileConfig(), max_positions=max_seq_len)
        self.step = self._build_step(model, compile_config)
        self.block_size = block_size
        self.max_blocks_per_seq = math.ceil(max_seq_len / block_size)
        self.num_blocks = (
            num_blocks if num_blocks is not None else self._default_num_blocks(max_batch_size, gpu_memory_fraction)
        )
        geometry = self.step.geometry
        # One block past the scheduler's: padding rows of CUDA-graph batches write there.
        self.kv_cache = torch.zeros(
            geometry.num_layers,
            2,
            self.num_blocks + 1,
            block_size,
            geometry.num_kv_heads,
            geometry.head_dim,
            dtype=geometry.dtype,
            device=self.device,
        )
        on_gpu = self.device.type == "cuda"
        self.use_cuda_graphs = on_gpu and _cuda_kernels_ready() and cuda_graphs
        # The step graph calls the kernels (GPU) or the PyTorch bodies (CPU) without the custom-op dispatch
        # around each: an eager step makes hundreds of such calls.
        if on_gpu:
            from trtllm_compile.kernels import bind_cuda_kernels

            logger.info(
                "step graph: %d op calls bound to their CUDA kernels", bind_cuda_kernels(self.step.graph_module)
            )
        else:
            logger.info(
                "step graph: %d op calls bound to their PyTorch bodies", bind_references(self.step.graph_module)
            )
        self.graph_sizes = cuda_graph_sizes(max_batch_size)
        # Pad tokens take position 0 and a prompt's positions stay below max_seq_len: every bucket is in the tables.
        longest = min(max_num_tokens, max_seq_len)
        self.prefill_graph_tokens = [t for t in PREFILL_GRAPH_TOKENS if t <= longest] if self.prefill_graphs else []
        # (rows, tokens of a prefill row or None) -> (graph, its input buffer, its logits)
        self._graphs: dict[tuple[int, int | None], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        # The last step's sampled tokens (publish_sampled), read by the next step's PENDING inputs; a graph
        # writes its logits' argmax there (`_greedy`: those of the last step, None after an eager one).
        self._samples = torch.zeros(max_batch_size, dtype=torch.int64, device=self.device)
        self._greedy: torch.Tensor | None = None
        # One memory pool for every graph: they replay one at a time, and each holds on to its outputs, so the pool
        # grows to the largest graph's needs instead of their sum (the KV cache took the rest of the memory).
        self._graph_pool = None
        logger.info(
            "KV cache: %d blocks of %d tokens, %s (%.2f GiB)",
            self.num_blocks,
            block_size,
            geometry.dtype,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**30,
        )

    def _build_step(self, model: torch.nn.Module, compile_config: CompileConfig | None):
        return build_step_graph(model, compile_config)

    def _bytes_per_block(self) -> int:
        g = self.step.geometry
        return 2 * g.num_layers * self.block_size * g.num_kv_heads * g.head_dim * g.dtype.itemsize

    def _default_num_blocks(self, max_batch_size: int, gpu_memory_fraction: float) -> int:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(self.device)
            return num_blocks_for_memory(free, gpu_memory_fraction, self._bytes_per_block())
        # CPU: room for a full batch of full sequences, within a share of the host's memory and a fixed cap (at
        # least one full sequence); `num_blocks` asks for more
        full_batch = max_batch_size * self.max_blocks_per_seq
        per_block = self._bytes_per_block()
        cap = CPU_KV_CACHE_MAX_BYTES // per_block
        available = available_host_memory()
        fit = full_batch if available is None else num_blocks_for_memory(available, CPU_KV_CACHE_FRACTION, per_block)
        return max(self.max_blocks_per_seq, min(full_batch, fit, cap))

    def execute(self, batch: ScheduledBatch, pending: PendingTokens | None = None) -> torch.Tensor:
        """Logits [num_sequences, vocab] (the model's dtype: the sampler casts what it needs to float32) of each
        sequence's last fed token, in batch order.
        `pending`: where the `PENDING` input tokens are (the previous step's samples, on the device)."""
        with fixed_plans(self.tp_invariant):
            return self._execute(batch, pending)

    def _execute(self, batch: ScheduledBatch, pending: PendingTokens | None) -> torch.Tensor:
        sequences = batch.sequences
        self._greedy = None
        # Decodes first: the GPU kernel handles the single-token rows together, prefills after.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].token_ids) > 1)
        ordered = [sequences[i] for i in order]
        if pending is not None:  # in the order the step feeds them
            pending = PendingTokens(pending.token_ids, [pending.rows[i] for i in order])
        decodes_only = all(len(s.token_ids) == 1 for s in ordered)
        if self.use_cuda_graphs and decodes_only and (rows := next_bucket(self.graph_sizes, len(ordered))):
            logits = self._replay(ordered, pending, rows)
        elif (tokens := self._prefill_bucket(ordered)) is not None:
            logits = self._replay(ordered, pending, 1, tokens)
        else:
            inputs, _, _ = self._inputs(ordered, len(ordered), self.max_blocks_for(ordered), pending)
            logits = self.step.graph_module(*inputs)[0][0]
        if order == sorted(order):  # the scheduler lists decodes first already: no reordering copy
            return logits
        out = torch.empty_like(logits)
        out[torch.tensor(order).to(logits.device, non_blocking=True)] = logits
        return out

    def _prefill_bucket(self, sequences) -> int | None:
        """The token count of the prefill graph this step replays: a step of one prompt, up to the largest bucket."""
        if not self.use_cuda_graphs or len(sequences) != 1:
            return None
        return next_bucket(self.prefill_graph_tokens, len(sequences[0].token_ids))

    def greedy_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's argmax of this step's `logits` (what `execute` returned): a graph computed them."""
        return self._greedy if self._greedy is not None else argmax(logits)

    def publish_sampled(self, token_ids: torch.Tensor) -> None:
        """The engine sampled `token_ids` from this step's logits: the next step's PENDING inputs read them from
        `_samples` (where a graph's greedy tokens are already)."""
        self._store_samples(token_ids)

    def _store_samples(self, token_ids: torch.Tensor) -> None:
        """Put `token_ids` at the start of `_samples`, unless they are there already (a view of it)."""
        if token_ids.data_ptr() != self._samples.data_ptr():
            self._samples[: token_ids.numel()].copy_(token_ids)

    def max_blocks_for(self, sequences) -> int:
        return max(len(s.block_table) for s in sequences)

    def _inputs(
        self,
        sequences,
        padded_rows: int,
        table_width: int,
        pending: PendingTokens | None = None,
        into: torch.Tensor | None = None,
        prefill_tokens: int | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """Step inputs for `sequences`, padded to `padded_rows` single-token rows writing to the spare block, the
        device buffer they are views of (`into`, a CUDA graph's, or a new one), and in it the [2, padded_rows]
        (flat token index, row of `pending.token_ids`) of each `PENDING` token (-1: none). `prefill_tokens`: the
        one row is a prompt padded to that many tokens; the pads (token 0 at position 0) come after its tokens,
        which attend causally and never see them, write to the spare block, and are not sampled.

        Built in numpy and copied in one asynchronous host-to-device copy: at a thousand rows, Python lists of block
        tables cost more than the step, and at one row each copy costs the GPU a few microseconds between steps.
        `PENDING` tokens are gathered from `pending` on the device, here or (`into`: a graph's step) in the graph.
        """
        spare = self.num_blocks
        fed = np.array([len(s.token_ids) for s in sequences] + [1] * (padded_rows - len(sequences)))
        lengths = fed if prefill_tokens is None else np.array([prefill_tokens])
        starts = np.zeros(padded_rows + 1, dtype=np.int32)
        np.cumsum(lengths, out=starts[1:])
        token_ids = np.zeros(starts[-1], dtype=np.int64)
        positions = np.zeros(starts[-1], dtype=np.int64)
        slots = np.full(starts[-1], spare * self.block_size, dtype=np.int64)
        tables = np.full((padded_rows, table_width), spare, dtype=np.int32)
        context_lens = np.ones(padded_rows, dtype=np.int32)
        # (flat token index, row of the previous step) of each PENDING token; a fixed width keeps the layout
        pending_at = np.full((2, padded_rows), -1, dtype=np.int64)
        num_pending = 0
        for row, seq in enumerate(sequences):
            rows = slice(starts[row], starts[row] + fed[row])
            if seq.token_ids[0] == PENDING:  # a decode: its single input token is still on the device
                pending_at[:, num_pending] = starts[row], pending.rows[row]
                num_pending += 1
            else:
                token_ids[rows] = seq.token_ids
            positions[rows] = np.arange(seq.start_pos, seq.start_pos + fed[row])
            slots[rows] = seq.slot_mapping
            tables[row, : len(seq.block_table)] = seq.block_table
            context_lens[row] = seq.start_pos + lengths[row]
        logits_indices = starts[:-1].astype(np.int64) + fed - 1
        host = (token_ids, positions, slots, tables, context_lens, logits_indices, pending_at)
        buffer, views = _copy_packed(host, self.device, into)
        device_token_ids, positions, slots, tables, context_lens, logits_indices, pending_at = views
        if num_pending and into is None:
            feed_pending(device_token_ids, pending_at, pending.token_ids)
        starts_on_host = torch.from_numpy(starts)  # the op slices sequences with it
        inputs = [device_token_ids[None], positions[None], self.kv_cache, slots, tables, context_lens]
        return [*inputs, starts_on_host, logits_indices], buffer, pending_at

    def _replay(
        self, sequences, pending: PendingTokens | None, rows: int, prefill_tokens: int | None = None
    ) -> torch.Tensor:
        """Replay the graph of `rows` decode rows, or (`prefill_tokens`) of one prompt padded to that many tokens."""
        key = (rows, prefill_tokens)
        if key not in self._graphs:
            self._graphs[key] = self._capture(rows, prefill_tokens)
        graph, buffer, static_logits = self._graphs[key]
        if pending is not None:
            # the graph reads them there (sampled rather than greedy, they are a copy of it already); not through
            # publish_sampled, which a tensor-parallel rank 0 would broadcast to ranks that do not expect it
            self._store_samples(pending.token_ids)
        # the graph reads its views of the buffer
        self._inputs(sequences, rows, self.max_blocks_per_seq, pending, into=buffer, prefill_tokens=prefill_tokens)
        graph.replay()
        self._greedy = self._samples[: len(sequences)]
        return static_logits[: len(sequences)]

    def _capture(self, rows: int, prefill_tokens: int | None = None):
        """Capture a step of `rows` decode rows (or of one prompt of `prefill_tokens`); its inputs are static buffers
        refilled before each replay. The graph feeds the PENDING tokens from `_samples` and writes its greedy tokens
        there."""
        static_inputs, buffer, pending_at = self._inputs(
            [], rows, self.max_blocks_per_seq, prefill_tokens=prefill_tokens
        )  # padding until refilled
        token_ids = static_inputs[0][0]

        def step(greedy_tokens: torch.Tensor) -> torch.Tensor:
            feed_pending(token_ids, pending_at, self._samples)
            logits = self.step.graph_module(*static_inputs)[0][0]
            argmax(logits, out=greedy_tokens)
            return logits

        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: autotuning and lazy initialization stay out of the graph
                step(torch.empty(rows, dtype=torch.int64, device=self.device))  # `_samples` holds tokens
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        self._graph_pool = self._graph_pool or torch.cuda.graph_pool_handle()
        with torch.cuda.graph(graph, pool=self._graph_pool, stream=stream):
            static_logits = step(self._samples[:rows])
        what = f"prefills of up to {prefill_tokens} tokens" if prefill_tokens else f"decode batches of {rows}"
        logger.info("captured a CUDA graph for %s", what)
        return graph, buffer, static_logits


def feed_pending(token_ids: torch.Tensor, pending_at: torch.Tensor, samples: torch.Tensor) -> None:
    """token_ids[pending_at[0, i]] = samples[pending_at[1, i]] for every i with pending_at[0, i] >= 0: a step's
    PENDING input tokens, from the samples of the step before (on a GPU one kernel, capturable in a graph)."""
    if token_ids.is_cuda and TRITON_AVAILABLE:
        from trtllm_compile.kernels import sampling

        sampling.feed_samples(token_ids, pending_at, samples)
    else:
        where, rows = pending_at[:, pending_at[0] >= 0]
        token_ids[where] = samples[rows]
