"""The engine thread: one background thread owns the `LLMEngine` and steps it while requests are pending.

Requests and aborts reach the thread through a thread-safe queue; each step's outputs go back to the event
loop in one `call_soon_threadsafe`, which puts each output on its request's asyncio queue. So concurrent HTTP
requests share every step (in-flight batching) and no engine state is touched outside the thread.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from trtllm_compile.runtime.engine import LLMEngine, RequestOutput
from trtllm_compile.runtime.sampling import SamplingParams

logger = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """More requests are in flight than the running batch plus the wait queue can hold."""


class EngineDeadError(RuntimeError):
    """The engine thread stopped (shut down, or a step raised); no request can be served."""


@dataclass
class _Add:
    request_id: str
    token_ids: list[int]
    params: SamplingParams
    sink: asyncio.Queue
    accepted: asyncio.Future


@dataclass
class _Abort:
    request_id: str


@dataclass
class EngineStats:
    """What the engine thread publishes after every step (read by /metrics and the queue-full check)."""

    num_waiting: int = 0
    num_running: int = 0
    num_used_blocks: int = 0
    num_blocks: int = 0


class AsyncEngine:
    """Drive `engine` from a background thread; `add()` and `abort()` are called on the event loop.

    `max_queue` bounds how many requests may wait beyond the running batch: with `max_batch_size + max_queue`
    requests in flight, `add()` raises `QueueFullError` instead of growing the queue.
    """

    def __init__(self, engine: LLMEngine, max_queue: int = 256, on_step: Callable[[EngineStats], None] | None = None):
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engine = engine
        self.max_queue = max_queue
        self.max_in_flight = engine.config.max_batch_size + max_queue
        self.stats = EngineStats(num_blocks=engine.block_manager.num_blocks)
        self._on_step = on_step
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, asyncio.Queue] = {}  # event-loop side: request id -> its output queue
        self._active: set[str] = set()  # engine-thread side: ids added and not yet finished or aborted
        self._ids = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.error: BaseException | None = None

    # ---- event-loop side -------------------------------------------------------------------------------

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="trtllm-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._commands.put(None)  # wake the thread if it is blocked waiting for work
        if self._thread is not None:
            self._thread.join(timeout)
        self._fail_all(EngineDeadError("the server is shutting down"))

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def num_in_flight(self) -> int:
        return len(self._sinks)

    async def add(self, token_ids: list[int], params: SamplingParams, sink: asyncio.Queue) -> str:
        """Queue a request whose outputs go to `sink`; returns its id once the engine has accepted it.

        Raises `QueueFullError` when full, `ValueError` for a request the engine can never run.
        """
        if not self.is_alive:
            raise EngineDeadError(f"the engine is not running ({self.error!r})")
        if len(self._sinks) >= self.max_in_flight:
            raise QueueFullError(
                f"{len(self._sinks)} requests in flight (max batch {self.engine.config.max_batch_size} + queue "
                f"{self.max_queue}); retry later"
            )
        request_id = f"srv-{next(self._ids)}"
        accepted = self._loop.create_future()
        self._sinks[request_id] = sink
        self._commands.put(_Add(request_id, token_ids, params, sink, accepted))
        try:
            await accepted
        except BaseException:  # rejected by the engine, or the caller was cancelled while waiting
            self.abort(request_id)
            raise
        return request_id

    def abort(self, request_id: str) -> bool:
        """Stop a request; its KV blocks are freed before the next step. False if it had finished already."""
        if self._sinks.pop(request_id, None) is None:
            return False
        self._commands.put(_Abort(request_id))
        return True

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if sink is None:
                continue  # aborted by its client while this step ran
            if output.finished:
                del self._sinks[output.request_id]
            sink.put_nowait(output)

    def _fail_all(self, error: BaseException) -> None:
        for sink in self._sinks.values():
            sink.put_nowait(error)
        self._sinks.clear()

    # ---- engine-thread side -------------------------------------------------------------------------------

    def _run(self) -> None:
        engine = self.engine
        try:
            while not self._stop.is_set():
                block = not engine.has_unfinished()
                self._apply_commands(block)
                if engine.has_unfinished():
                    outputs = engine.step()
                    self._active.difference_update(o.request_id for o in outputs if o.finished)
                    if outputs:
                        self._loop.call_soon_threadsafe(self._deliver, outputs)
                self._publish_stats()
        except BaseException as error:  # a failing step must not leave clients waiting forever
            logger.exception("engine step failed; the server cannot serve requests any more")
            self.error = error
            self._loop.call_soon_threadsafe(self._fail_all, EngineDeadError(f"engine step failed: {error!r}"))
        finally:
            for request_id in list(self._active):  # shut down mid-request: give every block back
                engine.abort(request_id)
            self._publish_stats()

    def _apply_commands(self, block: bool) -> None:
        # Idle: wait for work (waking every second to see the stop flag); busy: take what arrived, don't wait.
        try:
            command = self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(command, _Add):
                self._add(command)
            elif isinstance(command, _Abort):
                self.engine.abort(command.request_id)
                self._active.discard(command.request_id)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _add(self, command: _Add) -> None:
        try:
            self.engine.add_request(command.token_ids, command.params, command.request_id)
        except (ValueError, TypeError) as error:
            self._loop.call_soon_threadsafe(_set_exception, command.accepted, error)
            return
        self._active.add(command.request_id)
        self._loop.call_soon_threadsafe(_set_result, command.accepted)

    def _publish_stats(self) -> None:
        scheduler = self.engine.scheduler
        self.stats = EngineStats(
            num_waiting=scheduler.num_waiting + self._commands.qsize(),
            num_running=scheduler.num_running,
            num_used_blocks=self.engine.block_manager.num_used_blocks,
            num_blocks=self.engine.block_manager.num_blocks,
        )
        if self._on_step is not None:
            self._on_step(self.stats)


def _set_result(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


def _set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
