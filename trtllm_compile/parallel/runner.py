"""One rank's model runner: its shard of the step graph on its device, its own KV cache (its KV heads), and the
step it runs in lockstep with the other ranks.

Rank 0 drives: the engine's scheduler hands it a batch, it broadcasts the batch (token ids, positions, slots and
block tables packed into one int64 tensor over the CPU control group) and runs the step like every other rank;
the graph's collectives combine the ranks' partial results, and rank 0 samples from the gathered logits. Ranks
1.. run `serve()`: receive a batch, run the same step (eager, or the same CUDA graph), until rank 0 stops them.
So only tensors cross ranks, and every rank makes the same eager/CUDA-graph choice from the same batch. On GPUs
the decode-sized all-reduces run as one-shot kernels over peer memory (`peer_all_reduce`), the rest on NCCL.

With overlap scheduling the next batch is sent before rank 0 has read the sampled tokens back: rank 0
broadcasts them over the device group right after sampling (queued on the stream, no host wait), and a
`PENDING` input carries the row of its token in them (the packed batch's fifth field per sequence).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable

import torch
import torch.distributed as dist

from trtllm_compile.config import CompileConfig
from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.parallel.peer_all_reduce import (
    PeerAllReduce,
    all_reduce_dtypes,
    all_reduce_row_width,
    bind_peer_all_reduce,
    rendezvous_made,
    why_nccl,
)
from trtllm_compile.parallel.step_graph import build_sharded_step_graph, place_constants
from trtllm_compile.runtime.model_runner import ModelRunner, PendingTokens
from trtllm_compile.runtime.scheduler import ScheduledBatch, ScheduledSequence

logger = logging.getLogger(__name__)

_STOP, _STEP = 0, 1
_MESSAGE = 1024  # int64s per control message: command, payload size, then the payload's first 1022 values
_FIELDS = 5  # per sequence: token count, start position, is_prefill, block count, pending row; then three lists


def pack_batch(batch: ScheduledBatch, pending: PendingTokens | None = None) -> torch.Tensor:
    """What the other ranks need of a scheduled batch, as one int64 tensor."""
    values: list[int] = []
    rows = pending.rows if pending is not None else [-1] * len(batch.sequences)
    for seq, row in zip(batch.sequences, rows, strict=True):
        values += (len(seq.token_ids), seq.start_pos, int(seq.is_prefill), len(seq.block_table), row)
        values += seq.token_ids
        values += seq.slot_mapping
        values += seq.block_table
    return torch.tensor(values, dtype=torch.int64)


def unpack_batch(packed: torch.Tensor) -> tuple[ScheduledBatch, list[int]]:
    """The batch, and each sequence's row in the previous step's samples (-1: its tokens are in the batch)."""
    values, i, sequences, rows = packed.tolist(), 0, [], []
    while i < len(values):
        n, start, prefill, blocks, row = values[i : i + _FIELDS]
        i += _FIELDS
        tokens, slots, table = values[i : i + n], values[i + n : i + 2 * n], values[i + 2 * n : i + 2 * n + blocks]
        i += 2 * n + blocks
        sequences.append(ScheduledSequence(None, tokens, start, bool(prefill), slots, table))
        rows.append(row)
    return ScheduledBatch(sequences), rows


class TensorParallelRunner(ModelRunner):
    """A ModelRunner for rank `tp.rank`: its graph shard on `device`, its KV heads, lockstep with the group."""

    prefill_graphs = False  # prefills run eagerly here: prefill graphs have not been run on two GPUs yet

    def __init__(
        self,
        model: torch.nn.Module | Callable[[], torch.nn.Module],
        *,
        tp: TensorParallelConfig,
        device: torch.device,
        control_group: dist.ProcessGroup | None,
        build_in_turn: bool = False,
        startup=None,
        **sizing,
    ):
        """`model`: the module, or a zero-argument callable making it (called in this rank's turn, then dropped).
        `build_in_turn`: ranks build their shards one after another, so the host holds one rank's transient
        copies (unsharded model, fused and sliced weights) at a time: for models near the host's memory.
        `startup`: launch.StartupWatch of spawned ranks (rank 0 hears of a rank that failed to build).
        `sizing`: ModelRunner's keyword arguments (max_batch_size, max_num_tokens, ..., compile_config)."""
        self.tp, self.control_group = tp, control_group
        self._build_in_turn, self._startup = build_in_turn, startup
        super().__init__(model, device=device, **sizing)
        kv_heads = self.step.geometry.num_kv_heads
        logger.info("rank %d of %d on %s: %d KV heads", tp.rank, tp.world_size, self.device, kv_heads)
        self.peer_all_reduce = self._bind_peer_all_reduce() if self.device.type == "cuda" else None

    def _bind_peer_all_reduce(self) -> PeerAllReduce | None:
        """Decode-sized all-reduces through peer memory (one kernel each) unless `why_nccl` says otherwise; None
        (NCCL for all) then. Collective: every rank decides from the same graph, environment and histories."""
        gm = self.step.graph_module
        made = [torch.zeros(1, dtype=torch.int64) for _ in range(self.tp.world_size)]
        dist.all_gather(made, torch.tensor([rendezvous_made()]), group=self.control_group)
        dtypes = all_reduce_dtypes(gm)
        reason = why_nccl(dtypes, [int(m) for m in made])
        if reason is not None:
            logger.warning("all-reduces on NCCL: %s", reason)
            return None
        try:
            reducer = PeerAllReduce(self.tp.group_name, self.device, dtypes.pop(), all_reduce_row_width(gm))
        except RuntimeError as error:  # GPUs without peer access, or torch built without symmetric memory
            logger.warning("all-reduces on NCCL: no symmetric memory between the GPUs (%s)", error)
            return None
        # Fixed plans (tp_invariant): the norm stays in its own kernel, as on one GPU; fused, it reduces otherwise.
        bound, fused = bind_peer_all_reduce(gm, reducer, fuse_norm=not self.tp_invariant)
        logger.info(
            "%d all-reduces (%d with the residual add + RMSNorm after them in the same kernel): up to %d rows over "
            "peer memory (one-shot), more on NCCL",
            bound,
            fused,
            reducer.rows.max_rows,
        )
        return reducer

    def _build_step(self, model, compile_config: CompileConfig | None):
        """This rank's shard, built in its turn; rank 0 returns once every rank has built (or one failed)."""
        tp, startup = self.tp, self._startup
        step = None
        for turn in range(tp.world_size) if self._build_in_turn else (tp.rank,):
            if turn == tp.rank:
                module = model if isinstance(model, torch.nn.Module) else model()
                step = build_sharded_step_graph(module, tp, compile_config)
                del module  # a model made here is freed before the next rank's turn
                place_constants(step.graph_module, self.device)
                if startup is not None and tp.rank:
                    startup.built(tp.rank)
            if self._build_in_turn:
                if startup is not None and tp.rank == 0 and turn:
                    startup.wait_built([turn])
                dist.barrier(group=self.control_group)
        if startup is not None and tp.rank == 0:
            startup.wait_built(range(1, tp.world_size))
        return step

    def _default_num_blocks(self, max_batch_size: int, gpu_memory_fraction: float) -> int:
        """The fewest blocks any rank has room for: the scheduler's one block table serves every rank."""
        gc.collect()  # the unsharded weights export and fusion left behind are gone only once collected
        blocks = torch.tensor([super()._default_num_blocks(max_batch_size, gpu_memory_fraction)])
        dist.all_reduce(blocks, op=dist.ReduceOp.MIN, group=self.control_group)
        return int(blocks)

    def execute(self, batch: ScheduledBatch, pending: PendingTokens | None = None) -> torch.Tensor:
        """Rank 0: send the batch to the other ranks, then run it; returns the gathered logits."""
        self._send(_STEP, pack_batch(batch, pending))
        return super().execute(batch, pending)

    def publish_sampled(self, token_ids: torch.Tensor) -> None:
        """Rank 0: every step's sampled tokens go to the other ranks, which feed them to the next step's
        PENDING inputs."""
        super().publish_sampled(token_ids)
        dist.broadcast(self._samples[: token_ids.numel()], src=0)

    def _send(self, command: int, payload: torch.Tensor) -> None:
        """One broadcast for a step whose batch fits the message (decode steps), a second for the rest."""
        message = torch.zeros(_MESSAGE, dtype=torch.int64)
        message[:2] = torch.tensor([command, payload.numel()])
        inline = min(payload.numel(), _MESSAGE - 2)
        message[2 : 2 + inline] = payload[:inline]
        dist.broadcast(message, src=0, group=self.control_group)
        if payload.numel() > inline:
            dist.broadcast(payload[inline:].contiguous(), src=0, group=self.control_group)

    def serve(self) -> None:
        """Ranks 1..: run every batch rank 0 broadcasts, until it sends stop."""
        message = torch.empty(_MESSAGE, dtype=torch.int64)
        sampled = None  # the previous step's tokens, as rank 0 sampled them
        while True:
            dist.broadcast(message, src=0, group=self.control_group)
            command, size = message[:2].tolist()
            if command == _STOP:
                return
            inline = min(size, _MESSAGE - 2)
            payload = torch.empty(size, dtype=torch.int64)
            payload[:inline] = message[2 : 2 + inline]
            if size > inline:
                rest = torch.empty(size - inline, dtype=torch.int64)
                dist.broadcast(rest, src=0, group=self.control_group)
                payload[inline:] = rest
            batch, rows = unpack_batch(payload)
            pending = PendingTokens(sampled, rows) if any(row >= 0 for row in rows) else None
            super().execute(batch, pending)
            sampled = self._samples[: len(batch.sequences)]  # where the next step's PENDING tokens are read
            dist.broadcast(sampled, src=0)

    def release(self) -> None:
        """Drop the captured CUDA graphs (before the process group goes: they hold its collectives)."""
        self._graphs.clear()
        self.peer_all_reduce = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def stop_workers(self) -> None:
        """Rank 0: tell the other ranks to leave `serve()`."""
        self._send(_STOP, torch.empty(0, dtype=torch.int64))
