"""In-flight batching scheduler driven by a fake model that reads its context back through the paged cache.

The fake model writes each fed token into the slots the scheduler gives it, then reads the whole context
back through the block table and returns a hash of it. So a wrong slot mapping, a block handed to two live
sequences, or a bad recompute after preemption changes the generated tokens, and the outputs would no
longer match the reference computed straight from the token ids.

`Overlapped` drives the scheduler as the engine does with overlap scheduling: step n+1 is scheduled and run
before step n's tokens are resolved, its `PENDING` inputs taken from step n's samples.
"""

from __future__ import annotations

import random

import pytest

from trtllm_compile.runtime.kv_cache import BlockManager
from trtllm_compile.runtime.sampling import SamplingParams
from trtllm_compile.runtime.scheduler import PENDING, Request, RequestStatus, ScheduledBatch, Scheduler

VOCAB = 50
TOKEN_OFFSET = 100  # generated ids never collide with small prompt ids


def next_token(context: list[int]) -> int:
    """Deterministic stand-in for a model: a position-weighted hash of the whole context."""
    return TOKEN_OFFSET + sum((i + 1) * t for i, t in enumerate(context)) * 7919 % VOCAB


def reference_output(prompt: list[int], num_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(num_tokens):
        tokens.append(next_token(tokens))
    return tokens[len(prompt) :]


class PagedFakeModel:
    def __init__(self, manager: BlockManager) -> None:
        self.block_size = manager.block_size
        self.cache: list[int | None] = [None] * (manager.num_blocks * manager.block_size)

    def step(self, batch: ScheduledBatch, pending: dict[str, int] | None = None) -> list[int]:
        """`pending`: the tokens sampled by the step in flight, by request id (the inputs fed as PENDING)."""
        sampled = []
        for seq in batch:
            assert len(seq.slot_mapping) == len(seq.token_ids)
            token_ids = [pending[seq.request.request_id] if t == PENDING else t for t in seq.token_ids]
            for slot, token in zip(seq.slot_mapping, token_ids, strict=True):
                self.cache[slot] = token
            context_len = seq.start_pos + len(token_ids)
            table, size = seq.block_table, self.block_size
            context = [self.cache[table[pos // size] * size + pos % size] for pos in range(context_len)]
            known = seq.request.all_token_ids[:context_len]  # without the pending token
            assert context[: len(known)] == known, "cache lost or mixed up tokens"
            sampled.append(next_token(context))
        return sampled


class Overlapped:
    """Schedule and run step n+1, then resolve step n (the engine's overlap scheduling)."""

    def __init__(self, scheduler: Scheduler, model: PagedFakeModel) -> None:
        self.scheduler, self.model = scheduler, model
        self.in_flight: tuple[ScheduledBatch, list[int]] | None = None
        self.preempted_with_pending: list[Request] = []  # preempted while their last token was in flight

    def step(self) -> tuple[ScheduledBatch, list[Request]]:
        batch = self.scheduler.schedule()
        self.preempted_with_pending += [r for r in batch.preempted if r.num_pending]
        previous = self.in_flight
        if previous is None:
            assert all(PENDING not in seq.token_ids for seq in batch)
        pending = {s.request.request_id: t for s, t in zip(*previous, strict=True)} if previous else None
        sampled = self.model.step(batch, pending)
        self.scheduler.advance(batch)
        finished = self.scheduler.resolve(*previous) if previous else []
        self.in_flight = (batch, sampled) if batch.sequences else None
        if self.scheduler.has_unfinished():
            assert batch.sequences or previous, "scheduler stalled with unfinished requests"
        return batch, finished


def make(num_blocks: int, block_size: int, max_batch_size: int, max_num_tokens: int, **kwargs):
    manager = BlockManager(num_blocks, block_size)
    scheduler = Scheduler(manager, max_batch_size, max_num_tokens, **kwargs)
    return manager, scheduler, PagedFakeModel(manager)


def step(scheduler: Scheduler, model: PagedFakeModel) -> tuple[ScheduledBatch, list[Request]]:
    batch = scheduler.schedule()
    assert len(batch) <= scheduler.max_batch_size
    assert batch.num_tokens <= scheduler.max_num_tokens
    assert len({seq.request.request_id for seq in batch}) == len(batch)
    if scheduler.has_unfinished():
        assert len(batch) > 0, "scheduler stalled with unfinished requests"
    return batch, scheduler.update(batch, model.step(batch))


def run_to_completion(
    scheduler: Scheduler, model: PagedFakeModel, max_steps: int = 1000, overlap: bool | Overlapped = False
) -> list[Request]:
    """`overlap`: True, or the Overlapped driver that has a step in flight, to run with overlap scheduling."""
    finished = []
    driver = overlap if isinstance(overlap, Overlapped) else Overlapped(scheduler, model)
    for _ in range(max_steps):
        if not scheduler.has_unfinished():
            return finished
        finished += (driver.step() if overlap else step(scheduler, model))[1]
    raise AssertionError("requests did not finish")


def request(request_id: str, prompt_len: int, max_tokens: int, **params) -> Request:
    prompt = [(sum(map(ord, request_id)) + 3 * i) % 40 for i in range(prompt_len)]
    return Request(request_id, prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0, **params))


def test_requests_join_mid_flight() -> None:
    manager, scheduler, model = make(num_blocks=16, block_size=4, max_batch_size=4, max_num_tokens=32)
    a, b = request("a", 5, 6), request("b", 3, 4)
    scheduler.add(a)
    batch, _ = step(scheduler, model)
    assert [(s.is_prefill, s.start_pos, s.token_ids) for s in batch] == [(True, 0, a.prompt_token_ids)]
    step(scheduler, model)
    scheduler.add(b)
    batch, _ = step(scheduler, model)
    decode_a, prefill_b = ("a", False, 6), ("b", True, 0)
    assert [(s.request.request_id, s.is_prefill, s.start_pos) for s in batch] == [decode_a, prefill_b]
    assert batch.sequences[0].token_ids == [a.output_token_ids[1]]
    assert batch.num_tokens == 1 + 3
    finished = run_to_completion(scheduler, model)
    assert {r.request_id for r in finished} == {"a", "b"}
    for r in (a, b):
        assert r.output_token_ids == reference_output(r.prompt_token_ids, r.params.max_tokens)
        assert (r.status, r.finish_reason) == (RequestStatus.FINISHED, "length")
    assert manager.num_used_blocks == 0


@pytest.mark.parametrize("overlap", [False, True], ids=["read-back", "overlap"])
def test_finishes_on_length_stop_token_and_eos(overlap: bool) -> None:
    prompt_len = 4
    expected = reference_output(request("s", prompt_len, 1).prompt_token_ids, 5)
    stop_at = expected[2]
    assert stop_at not in expected[:2]
    manager, scheduler, model = make(16, 4, 4, 64, eos_token_id=[999, stop_at])
    by_length = request("len", 3, 3, ignore_eos=True)
    by_stop_id = request("s", prompt_len, 10, stop_token_ids=[stop_at])
    same_prompt = by_stop_id.prompt_token_ids
    by_eos = Request("eos", list(same_prompt), SamplingParams(max_tokens=10, temperature=0.0))
    ignoring = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    eos_ignored = Request("ign", list(same_prompt), ignoring)
    for r in (by_length, by_stop_id, by_eos, eos_ignored):
        scheduler.add(r)
    run_to_completion(scheduler, model, overlap=overlap)
    assert (len(by_length.output_token_ids), by_length.finish_reason) == (3, "length")
    assert (by_stop_id.output_token_ids, by_stop_id.finish_reason) == (expected[:3], "stop")
    assert (by_eos.output_token_ids, by_eos.finish_reason) == (expected[:3], "stop")
    assert (eos_ignored.output_token_ids, eos_ignored.finish_reason) == (expected, "length")
    assert manager.num_used_blocks == 0


def test_waits_for_blocks_then_runs() -> None:
    manager, scheduler, model = make(num_blocks=4, block_size=4, max_batch_size=4, max_num_tokens=64)
    a, b = request("a", 12, 2), request("b", 8, 3)
    scheduler.add(a)
    scheduler.add(b)
    batch, _ = step(scheduler, model)
    assert [s.request.request_id for s in batch] == ["a"]
    assert (scheduler.num_running, scheduler.num_waiting) == (1, 1)
    assert b.status is RequestStatus.WAITING
    _, finished = step(scheduler, model)  # a's decode takes the 4th block and finishes
    assert finished == [a] and manager.num_used_blocks == 0
    batch, _ = step(scheduler, model)
    assert [(s.request.request_id, s.is_prefill) for s in batch] == [("b", True)]
    run_to_completion(scheduler, model)
    assert b.output_token_ids == reference_output(b.prompt_token_ids, 3)
    assert manager.num_used_blocks == 0


def test_batch_size_and_token_budget_bound_admission() -> None:
    manager, scheduler, model = make(num_blocks=64, block_size=4, max_batch_size=2, max_num_tokens=10)
    for i in range(4):
        scheduler.add(request(f"r{i}", 6, 3))
    batch, _ = step(scheduler, model)
    assert len(batch) == 1  # two prompts of 6 would exceed 10 tokens
    batch, _ = step(scheduler, model)
    assert [(s.request.request_id, s.is_prefill) for s in batch] == [("r0", False), ("r1", True)]
    batch, _ = step(scheduler, model)
    assert len(batch) == 2 and scheduler.num_waiting == 2  # batch is full
    run_to_completion(scheduler, model)
    assert manager.num_used_blocks == 0


def test_preemption_recomputes_and_completes() -> None:
    # Each request grows to 14 tokens (4 blocks): the cache cannot hold both at full length.
    manager, scheduler, model = make(num_blocks=5, block_size=4, max_batch_size=2, max_num_tokens=64)
    a, b, late = request("a", 6, 8), request("b", 6, 8), request("late", 2, 2)
    for r in (a, b, late):
        scheduler.add(r)
    preempted_batch = None
    for _ in range(100):
        batch, _ = step(scheduler, model)
        assert late.status is RequestStatus.WAITING  # the batch is full until b is preempted
        if batch.preempted:
            preempted_batch = batch
            break
    assert preempted_batch is not None and preempted_batch.preempted == [b]
    assert [s.request.request_id for s in preempted_batch] == ["a"]
    assert b.status is RequestStatus.WAITING and b.num_preemptions == 1
    generated_before = len(b.output_token_ids)
    assert generated_before > 0
    recompute = None
    while recompute is None:
        batch, _ = step(scheduler, model)
        order = [s.request.request_id for s in batch]
        recompute = next((s for s in batch if s.request is b), None)
        if "late" in order:  # the preempted request returns to the front of the queue, ahead of late
            assert "b" in order and order.index("b") < order.index("late")
    assert recompute.is_prefill and recompute.start_pos == 0
    assert recompute.token_ids == b.prompt_token_ids + b.output_token_ids[:generated_before]
    run_to_completion(scheduler, model)
    for r in (a, b, late):
        assert r.output_token_ids == reference_output(r.prompt_token_ids, r.params.max_tokens)
        assert r.finish_reason == "length"
    assert manager.num_used_blocks == 0


@pytest.mark.parametrize("overlap", [False, True], ids=["read-back", "overlap"])
@pytest.mark.parametrize("seed", range(5))
def test_random_traffic_respects_bounds_and_leaks_nothing(seed: int, overlap: bool) -> None:
    rng = random.Random(seed)
    manager, scheduler, model = make(num_blocks=10, block_size=4, max_batch_size=4, max_num_tokens=16)
    driver = Overlapped(scheduler, model)
    pending = [request(f"r{i}", rng.randint(1, 12), rng.randint(1, 12)) for i in range(24)]
    all_requests = list(pending)
    aborted = set()
    for _ in range(2000):
        for _ in range(rng.randint(0, 2)):
            if pending:
                scheduler.add(pending.pop(0))
        if rng.random() < 0.05 and scheduler.has_unfinished():
            victim = rng.choice([r for r in all_requests if r.status is not RequestStatus.FINISHED])
            if victim.arrival_order >= 0:
                assert scheduler.abort(victim.request_id) is victim
                aborted.add(victim.request_id)
        driver.step() if overlap else step(scheduler, model)
        if not pending and not scheduler.has_unfinished():
            break
    assert not scheduler.has_unfinished() and manager.num_used_blocks == 0
    for r in all_requests:
        # Sequences stop at max_seq_len (16 here) even when max_tokens would allow more.
        room = scheduler.max_seq_len - len(r.prompt_token_ids)
        expected = reference_output(r.prompt_token_ids, min(r.params.max_tokens, room))
        if r.request_id in aborted:
            assert r.finish_reason == "abort" and r.output_token_ids == expected[: len(r.output_token_ids)]
        else:
            assert r.finish_reason == "length" and r.output_token_ids == expected


def test_abort_and_finish_free_blocks_at_once() -> None:
    manager, scheduler, model = make(num_blocks=8, block_size=4, max_batch_size=4, max_num_tokens=64)
    running, stopped, waiting = request("run", 8, 5), request("stop", 3, 5), request("wait", 30, 5)
    for r in (running, stopped, waiting):
        scheduler.add(r)
    step(scheduler, model)
    assert manager.num_used_blocks == 3 and scheduler.num_waiting == 1
    assert scheduler.abort("run") is running
    assert manager.num_used_blocks == 1 and running.finish_reason == "abort"
    assert scheduler.abort("wait") is waiting and scheduler.num_waiting == 0
    assert scheduler.abort("wait") is None and scheduler.abort("unknown") is None
    batch = scheduler.schedule()
    assert scheduler.finish("stop", "stop") is stopped  # e.g. a stop string matched between steps
    assert scheduler.update(batch, model.step(batch)) == []
    assert stopped.finish_reason == "stop" and len(stopped.output_token_ids) == 1
    assert not scheduler.has_unfinished() and manager.num_used_blocks == 0


@pytest.mark.parametrize("overlap", [False, True], ids=["read-back", "overlap"])
def test_sequence_outgrowing_the_cache_finishes_with_length(overlap: bool) -> None:
    manager, scheduler, model = make(num_blocks=2, block_size=4, max_batch_size=2, max_num_tokens=16)
    assert scheduler.max_seq_len == 8
    long_runner = request("long", 3, 100)
    scheduler.add(long_runner)
    run_to_completion(scheduler, model, overlap=overlap)
    assert (long_runner.num_tokens, long_runner.finish_reason) == (8, "length")
    assert manager.num_used_blocks == 0


def test_impossible_requests_are_rejected_at_add() -> None:
    _, scheduler, _ = make(num_blocks=4, block_size=4, max_batch_size=2, max_num_tokens=12)
    with pytest.raises(ValueError, match="num_blocks=4"):
        scheduler.add(request("too_many_blocks", 17, 1))
    with pytest.raises(ValueError, match="max_num_tokens=12"):
        scheduler.add(request("too_many_tokens", 13, 1))
    with pytest.raises(ValueError, match="empty prompt"):
        scheduler.add(Request("empty", [], SamplingParams()))
    scheduler.add(request("ok", 12, 1))
    with pytest.raises(ValueError, match="already queued"):
        scheduler.add(request("ok", 3, 1))
    assert scheduler.num_waiting == 1
    with pytest.raises(ValueError, match="max_batch_size"):
        Scheduler(BlockManager(4, 4), max_batch_size=8, max_num_tokens=4)
    with pytest.raises(ValueError, match="max_seq_len"):
        Scheduler(BlockManager(4, 4), max_batch_size=2, max_num_tokens=64, max_seq_len=17)


def test_overlapped_preemption_waits_for_the_victims_token_then_recomputes_it() -> None:
    manager, scheduler, model = make(num_blocks=5, block_size=4, max_batch_size=2, max_num_tokens=64)
    a, b = request("a", 6, 8), request("b", 6, 8)
    for r in (a, b):
        scheduler.add(r)
    driver = Overlapped(scheduler, model)
    for _ in range(100):
        batch, _ = driver.step()
        if batch.preempted:
            break
    assert batch.preempted == [b] and driver.preempted_with_pending == [b]
    assert b.num_pending == 0 and b.status is RequestStatus.WAITING  # its in-flight token was read back
    generated = list(b.output_token_ids)
    recompute = None
    while recompute is None:
        recompute = next((seq for seq in driver.step()[0] if seq.request is b), None)
    assert recompute.is_prefill and recompute.token_ids == b.prompt_token_ids + generated  # with that token
    run_to_completion(scheduler, model, overlap=driver)
    for r in (a, b):
        assert r.output_token_ids == reference_output(r.prompt_token_ids, r.params.max_tokens)
    assert manager.num_used_blocks == 0


def test_a_preempted_request_waits_for_its_tokens_in_flight_before_it_is_recomputed() -> None:
    """A driver may schedule again before reading back: a request preempted with tokens in flight is not
    prefilled again until they are resolved (its recompute must feed them)."""
    manager, scheduler, _ = make(num_blocks=4, block_size=4, max_batch_size=2, max_num_tokens=64)
    a, b = request("a", 6, 8), request("b", 6, 8)
    scheduler.add(a)
    scheduler.add(b)
    launched = []
    for _ in range(4):  # two prefills of 2 blocks each fill the cache; a's 9th token preempts b
        batch = scheduler.schedule()
        scheduler.advance(batch)
        launched.append(batch)
    assert launched[-1].preempted == [b] and b.num_pending == 3
    scheduler.abort("a")  # its blocks are free: b would fit now
    assert all(seq.request is not b for seq in scheduler.schedule())
    for step, batch in enumerate(launched):
        scheduler.resolve(batch, [100 + step] * len(batch))
    assert b.num_pending == 0 and b.output_token_ids == [100, 101, 102]
    (recompute,) = scheduler.schedule().sequences
    assert recompute.request is b and recompute.token_ids == b.prompt_token_ids + [100, 101, 102]
    assert manager.num_used_blocks == 3
