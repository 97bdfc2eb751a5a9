"""Runs the step graph on a scheduled batch: builds the flat token row and attention metadata, owns the paged
KV cache, and replays CUDA graphs for decode-only steps (bucketed batch sizes)."""

from __future__ import annotations

import bisect
import logging
import math

import torch

from trtllm_compile.config import CompileConfig
from trtllm_compile.runtime.kv_cache import num_blocks_for_memory
from trtllm_compile.runtime.scheduler import ScheduledBatch
from trtllm_compile.runtime.step_graph import build_step_graph

logger = logging.getLogger(__name__)

CUDA_GRAPH_BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def _cuda_kernels_ready() -> bool:
    """Register the Triton kernels; without them the reference paged attention syncs and cannot be captured."""
    from trtllm_compile.kernels import register_cuda_kernels

    if register_cuda_kernels():
        return True
    logger.warning("CUDA graphs disabled: the trtllm CUDA kernels need triton (pip install triton)")
    return False


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        *,
        max_batch_size: int,
        max_num_tokens: int,
        max_seq_len: int,
        block_size: int = 16,
        num_blocks: int | None = None,
        gpu_memory_fraction: float = 0.9,
        cuda_graphs: bool = True,
        compile_config: CompileConfig | None = None,
    ):
        self.device = next(model.parameters()).device
        self.step = build_step_graph(model, compile_config)
        self.block_size = block_size
        self.max_blocks_per_seq = math.ceil(max_seq_len / block_size)
        self.num_blocks = num_blocks or self._default_num_blocks(max_batch_size, gpu_memory_fraction)
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
        self.use_cuda_graphs = cuda_graphs and self.device.type == "cuda" and _cuda_kernels_ready()
        self.graph_sizes = [b for b in CUDA_GRAPH_BATCH_SIZES if b <= max_batch_size]
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, list[torch.Tensor], torch.Tensor]] = {}
        logger.info(
            "KV cache: %d blocks of %d tokens (%.2f GiB)",
            self.num_blocks,
            block_size,
            self.kv_cache.numel() * self.kv_cache.element_size() / 2**30,
        )

    def _bytes_per_block(self) -> int:
        g = self.step.geometry
        return 2 * g.num_layers * self.block_size * g.num_kv_heads * g.head_dim * g.dtype.itemsize

    def _default_num_blocks(self, max_batch_size: int, gpu_memory_fraction: float) -> int:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info(self.device)
            return num_blocks_for_memory(free, gpu_memory_fraction, self._bytes_per_block())
        return max_batch_size * self.max_blocks_per_seq  # CPU: room for a full batch of full sequences

    def execute(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits [num_sequences, vocab] (float32) of each sequence's last fed token, in batch order."""
        sequences = batch.sequences
        # Decodes first: the GPU kernel handles the single-token rows together, prefills after.
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].token_ids) > 1)
        ordered = [sequences[i] for i in order]
        if (
            self.use_cuda_graphs
            and all(len(s.token_ids) == 1 for s in ordered)
            and len(ordered) <= self.graph_sizes[-1]
        ):
            logits = self._replay(ordered)
        else:
            logits = self.step.graph_module(*self._inputs(ordered, len(ordered), self.max_blocks_for(ordered)))[0][0]
        out = torch.empty_like(logits, dtype=torch.float32)
        out[torch.tensor(order, device=logits.device)] = logits.float()
        return out

    def max_blocks_for(self, sequences) -> int:
        return max(len(s.block_table) for s in sequences)

    def _inputs(self, sequences, padded_rows: int, table_width: int) -> list[torch.Tensor]:
        """Step inputs for `sequences`, padded to `padded_rows` single-token rows writing to the spare block."""
        spare = self.num_blocks
        token_ids, positions, slots, tables, context_lens, starts = [], [], [], [], [], [0]
        for seq in sequences:
            n = len(seq.token_ids)
            token_ids += seq.token_ids
            positions += range(seq.start_pos, seq.start_pos + n)
            slots += seq.slot_mapping
            tables.append(seq.block_table + [spare] * (table_width - len(seq.block_table)))
            context_lens.append(seq.start_pos + n)
            starts.append(starts[-1] + n)
        for _ in range(padded_rows - len(sequences)):
            token_ids.append(0)
            positions.append(0)
            slots.append(spare * self.block_size)
            tables.append([spare] * table_width)
            context_lens.append(1)
            starts.append(starts[-1] + 1)
        device = self.device
        return [
            torch.tensor([token_ids], device=device),
            torch.tensor([positions], device=device),
            self.kv_cache,
            torch.tensor(slots, device=device),
            torch.tensor(tables, dtype=torch.int32, device=device),
            torch.tensor(context_lens, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int32),  # host copy: the op slices sequences with it
            torch.tensor(starts[1:], device=device) - 1,
        ]

    def _replay(self, sequences) -> torch.Tensor:
        size = self.graph_sizes[bisect.bisect_left(self.graph_sizes, len(sequences))]
        if size not in self._graphs:
            self._graphs[size] = self._capture(size)
        graph, static_inputs, static_logits = self._graphs[size]
        fresh = self._inputs(sequences, size, self.max_blocks_per_seq)
        for static, new in zip(static_inputs, fresh, strict=True):
            if static is not self.kv_cache and static.device.type == "cuda":
                static.copy_(new, non_blocking=True)
        graph.replay()
        return static_logits[: len(sequences)]

    def _capture(self, size: int):
        """Capture a decode step of `size` rows; its inputs are static buffers refilled before each replay."""
        static_inputs = self._inputs([], size, self.max_blocks_per_seq)  # all padding rows until refilled
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up: autotuning and lazy initialization stay out of the graph
                self.step.graph_module(*static_inputs)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            static_logits = self.step.graph_module(*static_inputs)[0][0]
        logger.info("captured a CUDA graph for decode batches of %d", size)
        return graph, static_inputs, static_logits
