"""In-flight batching: which requests run each step, and what they feed the model.

Every step, each running request decodes one token; waiting requests join first-come-first-served as a
prefill of their whole sequence while the batch has room (`max_batch_size`), the step has token budget
(`max_num_tokens`) and the KV cache has blocks. When a running request cannot get a block for its next
token, the most recently admitted request is preempted: its blocks are freed and it goes back to the front
of the queue, to be recomputed later by a prefill of prompt + generated tokens.

Because a recompute is one prefill, a sequence may never grow past `max_seq_len` (at most `max_num_tokens`
and the whole cache); one that reaches it finishes with "length" instead of getting stuck.

A step's sampled tokens may still be on the device when the next step is scheduled (the engine overlaps the
host's work with the GPU's): `advance()` counts each scheduled request's token as pending, the next step feeds
it as `PENDING` (the runner takes it from the device), and `resolve()` records the values once read back. A
request whose last token is in flight and that then reaches its length limit is not scheduled again; one that
turns out to have sampled a stop token had one more step in flight, whose token `resolve()` drops.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from trtllm_compile.runtime.kv_cache import BlockManager, blocks_needed
from trtllm_compile.runtime.sampling import SamplingParams

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "abort"]
PENDING = -1  # a decode's input token that the previous step sampled and the host has not read back yet


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    output_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    arrival_order: int = -1  # set by Scheduler.add
    num_preemptions: int = 0
    num_pending: int = 0  # sampled tokens not read back yet (they follow output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        """Prompt and output tokens read back so far (without the pending ones)."""
        return self.prompt_token_ids + self.output_token_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids) + self.num_pending

    @property
    def last_token_id(self) -> int:
        return PENDING if self.num_pending else self.all_token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status is RequestStatus.FINISHED


@dataclass
class ScheduledSequence:
    """One request's share of a step: feed `token_ids` at positions start_pos.. and sample after the last."""

    request: Request
    token_ids: list[int]
    start_pos: int
    is_prefill: bool
    slot_mapping: list[int]
    block_table: list[int]


@dataclass
class ScheduledBatch:
    sequences: list[ScheduledSequence] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(seq.token_ids) for seq in self.sequences)

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self) -> Iterator[ScheduledSequence]:
        return iter(self.sequences)


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_batch_size: int,
        max_num_tokens: int,
        eos_token_id: int | list[int] | None = None,
        max_seq_len: int | None = None,
    ) -> None:
        if max_batch_size < 1 or max_num_tokens < max_batch_size:
            raise ValueError(
                f"need 1 <= max_batch_size <= max_num_tokens (every running request decodes a token each "
                f"step), got max_batch_size={max_batch_size}, max_num_tokens={max_num_tokens}"
            )
        cache_tokens = block_manager.num_blocks * block_manager.block_size
        longest_recompute = min(max_num_tokens, cache_tokens)
        if max_seq_len is not None and not 1 <= max_seq_len <= longest_recompute:
            raise ValueError(
                f"max_seq_len={max_seq_len} must be in [1, {longest_recompute}]: a preempted sequence is "
                f"recomputed in one prefill, so it must fit max_num_tokens and the cache of {cache_tokens} "
                f"tokens; raise max_num_tokens or the cache size"
            )
        self.block_manager = block_manager
        self.max_batch_size = max_batch_size
        self.max_num_tokens = max_num_tokens
        self.max_seq_len = max_seq_len or longest_recompute
        if eos_token_id is None:
            self.eos_token_ids: frozenset[int] = frozenset()
        else:
            self.eos_token_ids = frozenset([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id)
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []  # in admission order: the last one is preempted first
        self._unfinished: dict[str, Request] = {}
        self._arrivals = itertools.count()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_unfinished(self) -> bool:
        return bool(self._unfinished)

    def add(self, request: Request) -> None:
        """Queue a request; raises ValueError if it could never be scheduled."""
        if request.request_id in self._unfinished:
            raise ValueError(f"request id {request.request_id!r} is already queued or running")
        num_prompt = len(request.prompt_token_ids)
        if num_prompt < 1:
            raise ValueError(f"request {request.request_id!r} has an empty prompt")
        needed = blocks_needed(num_prompt, self.block_manager.block_size)
        if needed > self.block_manager.num_blocks:
            raise ValueError(
                f"request {request.request_id!r}: prompt of {num_prompt} tokens needs {needed} KV cache "
                f"blocks but the cache has only num_blocks={self.block_manager.num_blocks}; shorten the "
                f"prompt or give the cache more memory"
            )
        if num_prompt > self.max_num_tokens:
            raise ValueError(
                f"request {request.request_id!r}: prompt of {num_prompt} tokens exceeds "
                f"max_num_tokens={self.max_num_tokens}; shorten the prompt or raise max_num_tokens"
            )
        if num_prompt > self.max_seq_len:
            raise ValueError(
                f"request {request.request_id!r}: prompt of {num_prompt} tokens exceeds max_seq_len={self.max_seq_len}"
            )
        request.status, request.finish_reason = RequestStatus.WAITING, None
        request.arrival_order = next(self._arrivals)
        self._unfinished[request.request_id] = request
        self._waiting.append(request)

    def abort(self, request_id: str) -> Request | None:
        """Stop a request now and free its blocks; returns it, or None if it is unknown or already done."""
        return self.finish(request_id, "abort")

    def finish(self, request_id: str, reason: FinishReason) -> Request | None:
        """Finish a request from outside (e.g. a stop string matched); frees its blocks at once."""
        request = self._unfinished.get(request_id)
        if request is None:
            return None
        if request.status is RequestStatus.WAITING:
            self._waiting.remove(request)
        else:
            self._running.remove(request)
        self._retire(request, reason)
        return request

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        self._schedule_decodes(batch)
        if not batch.preempted:  # re-admitting right after a preemption would only thrash
            self._admit_waiting(batch)
        return batch

    def update(self, batch: ScheduledBatch, sampled_token_ids: list[int]) -> list[Request]:
        """`advance` then `resolve`: a step whose tokens are read back before the next one is scheduled."""
        self.advance(batch)
        return self.resolve(batch, sampled_token_ids)

    def advance(self, batch: ScheduledBatch) -> None:
        """The step is launched: each scheduled request has one more token, pending until `resolve`."""
        for seq in batch.sequences:
            if not seq.request.is_finished:
                seq.request.num_pending += 1

    def resolve(self, batch: ScheduledBatch, sampled_token_ids: list[int]) -> list[Request]:
        """Record each scheduled request's sampled token; returns the requests that finished with it. Requests
        finished in the meantime (from outside, or by a stop token of the step before) are skipped."""
        if len(sampled_token_ids) != len(batch.sequences):
            raise ValueError(f"{len(batch)} sequences scheduled but {len(sampled_token_ids)} sampled tokens")
        finished = []
        for seq, token_id in zip(batch.sequences, sampled_token_ids, strict=True):
            request = seq.request
            if request.is_finished:
                continue
            request.num_pending -= 1
            request.output_token_ids.append(int(token_id))
            reason = self._finish_reason(request, int(token_id))
            if reason is not None:
                self.finish(request.request_id, reason)
                finished.append(request)
        return finished

    def _schedule_decodes(self, batch: ScheduledBatch) -> None:
        index = 0
        while index < len(self._running):
            request = self._running[index]
            if self._reached_length(request):
                index += 1
                continue  # its last token is in flight; it finishes when that is read back
            # The KV of every token but the last is cached; this step writes the last one's.
            while not self.block_manager.can_append(request.request_id, 1):
                victim = self._running.pop()
                self._preempt(victim, batch)
                if victim is request:
                    break
            if request.status is not RequestStatus.RUNNING:
                continue  # it preempted itself: the loop ends here as it was the last one
            position = request.num_tokens - 1
            slots = self.block_manager.append_slots(request.request_id, 1)
            table = self.block_manager.block_table(request.request_id)
            batch.sequences.append(ScheduledSequence(request, [request.last_token_id], position, False, slots, table))
            index += 1

    def _admit_waiting(self, batch: ScheduledBatch) -> None:
        num_tokens = batch.num_tokens
        while self._waiting and len(self._running) < self.max_batch_size:
            request = self._waiting[0]
            if request.num_pending:  # preempted with a token in flight: recomputed once it is read back
                break
            token_ids = request.all_token_ids  # prompt, plus generated tokens after a preemption
            if num_tokens + len(token_ids) > self.max_num_tokens:
                break
            if not self.block_manager.can_allocate(len(token_ids)):
                break
            self._waiting.popleft()
            table = self.block_manager.allocate(request.request_id, len(token_ids))
            slots = self.block_manager.slot_mapping(request.request_id, 0, len(token_ids))
            request.status = RequestStatus.RUNNING
            self._running.append(request)
            batch.sequences.append(ScheduledSequence(request, token_ids, 0, True, slots, table))
            num_tokens += len(token_ids)

    def _preempt(self, request: Request, batch: ScheduledBatch) -> None:
        logger.debug("preempting request %r (%d tokens): KV cache is full", request.request_id, request.num_tokens)
        self.block_manager.free(request.request_id)
        request.status = RequestStatus.WAITING
        request.num_preemptions += 1
        self._waiting.appendleft(request)
        batch.preempted.append(request)

    def _finish_reason(self, request: Request, token_id: int) -> FinishReason | None:
        params = request.params
        if token_id in params.stop_token_ids or (not params.ignore_eos and token_id in self.eos_token_ids):
            return "stop"
        generated = len(request.output_token_ids)
        if generated >= params.max_tokens or len(request.prompt_token_ids) + generated >= self.max_seq_len:
            return "length"
        return None

    def _reached_length(self, request: Request) -> bool:
        """Counting its pending tokens, the request has all the tokens it may have: schedule it no more."""
        generated = len(request.output_token_ids) + request.num_pending
        return generated >= request.params.max_tokens or request.num_tokens >= self.max_seq_len

    def _retire(self, request: Request, reason: FinishReason) -> None:
        if request.request_id in self.block_manager:
            self.block_manager.free(request.request_id)
        request.status, request.finish_reason = RequestStatus.FINISHED, reason
        request.num_pending = 0  # a token still in flight is dropped when it arrives
        del self._unfinished[request.request_id]
