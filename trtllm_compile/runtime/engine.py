"""The generation engine: scheduler + model runner + sampler + detokenizer, one `step()` at a time.

`LLM` (offline batches), the Hugging Face `generate()` shim and the OpenAI server all drive this loop, so
concurrent requests share each step's GEMMs (in-flight batching).

Overlap scheduling (on by default): `step()` launches step n+1 before it reads step n's sampled tokens back, so
the host's scheduling, input building, sampling and detokenizing run while the GPU computes, instead of
between its steps. Step n+1's decodes take their input tokens from step n's sampled tokens on the device.
Outputs then trail the launches by one step, and a request that samples a stop token has had one more step
computed, which is dropped. Steps whose sampling needs every earlier token on the host (repetition penalty)
read the step in flight back first.

During a step, the objects the process held when it began are frozen out of Python's garbage collection
(`gc.freeze`; any frozen before are unfrozen after it, which only the fork-sharing use of the freeze would
notice, and it has forked by then). A collection of the oldest generation walks every object: ~1M once torch,
transformers, triton and inductor are loaded, 0.4-0.7 s, and one fell in most 4 s max-load runs
(docs/benchmarks.md run 86). Within a step, collections walk only what the step made.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from trtllm_compile.config import CompileConfig
from trtllm_compile.runtime.detokenizer import IncrementalDetokenizer, find_stop
from trtllm_compile.runtime.kv_cache import BlockManager
from trtllm_compile.runtime.model_runner import ModelRunner, PendingTokens
from trtllm_compile.runtime.sampling import SamplingParams, make_generator, sample
from trtllm_compile.runtime.scheduler import PENDING, Request, ScheduledBatch, Scheduler

logger = logging.getLogger(__name__)

_steps_running = 0  # steps of any engine in this process, which may step engines from several threads
_steps_lock = threading.Lock()


@contextlib.contextmanager
def _heap_frozen() -> Iterator[None]:
    global _steps_running
    with _steps_lock:
        _steps_running += 1
        if _steps_running == 1:
            gc.freeze()
    try:
        yield
    finally:
        with _steps_lock:
            _steps_running -= 1
            if _steps_running == 0:
                gc.unfreeze()


@dataclass
class EngineConfig:
    max_batch_size: int = 64
    max_num_tokens: int = 4096  # per step; also the longest sequence (a preempted one is recomputed at once)
    block_size: int = 16
    num_blocks: int | None = None  # default: fill `gpu_memory_fraction` of free GPU memory (CPU: a full batch)
    gpu_memory_fraction: float = 0.9
    cuda_graphs: bool = True
    compile: CompileConfig = field(default_factory=CompileConfig)
    tensor_parallel_size: int = 1  # ranks (one GPU each; gloo processes on CPU); see parallel/launch.py
    build_in_turn: bool = False  # tensor parallel: ranks build their shards one at a time (host memory)
    overlap_scheduling: bool = True  # launch step n+1 before reading step n's tokens back

    def __post_init__(self):
        # Checked here, before a model is loaded or a cache allocated (max_batch_size against max_num_tokens: the
        # scheduler's check; tensor_parallel_size: the engine's)
        if self.block_size < 1 or (self.num_blocks is not None and self.num_blocks < 1):
            raise ValueError(
                f"the KV cache needs block_size >= 1 and num_blocks >= 1 (or None: sized from free memory), got "
                f"block_size={self.block_size}, num_blocks={self.num_blocks}"
            )
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(
                f"gpu_memory_fraction is a share of free GPU memory in (0, 1], not {self.gpu_memory_fraction}"
            )


@dataclass
class _LaunchedStep:
    """A step queued on the device: its batch, its sampled tokens there, and their copy to the host."""

    batch: ScheduledBatch
    token_ids: torch.Tensor
    host_token_ids: torch.Tensor
    copied: torch.cuda.Event | None  # None on CPU, where the tokens are on the host already

    def feeding(self, batch: ScheduledBatch) -> PendingTokens:
        """Where `batch`'s PENDING input tokens are among this step's samples."""
        rows = {seq.request.request_id: row for row, seq in enumerate(self.batch.sequences)}
        sources = [rows[seq.request.request_id] if seq.token_ids[0] == PENDING else -1 for seq in batch.sequences]
        return PendingTokens(self.token_ids, sources)


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    # Text added by the latest step (streaming). Until the request finishes, the deltas so far are `text` less a
    # partial character and, with stop strings, its last len(stop) - 1 characters.
    new_text: str = ""
    finished: bool = False
    finish_reason: str | None = None


class LLMEngine:
    """`model_source` / `device_type`, with `tensor_parallel_size` > 1: how the spawned ranks get the model (the
    module itself by default, a picklable factory, or a folder) and the device kind they run on (see
    `parallel.launch.start_group`); this process is rank 0 and drives them. `close()` stops them."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer=None,
        config: EngineConfig | None = None,
        *,
        model_source=None,
        device_type: str | None = None,
    ):
        self.config = config = config or EngineConfig()
        self.tokenizer = tokenizer
        self.vocab_size = model.get_input_embeddings().num_embeddings
        self.max_seq_len = min(config.max_num_tokens, getattr(model.config, "max_position_embeddings", 1 << 30))
        runner_kwargs = dict(
            max_batch_size=config.max_batch_size,
            max_num_tokens=config.max_num_tokens,
            max_seq_len=self.max_seq_len,
            block_size=config.block_size,
            num_blocks=config.num_blocks,
            gpu_memory_fraction=config.gpu_memory_fraction,
            cuda_graphs=config.cuda_graphs,
            compile_config=config.compile,
        )
        self._group = None
        if config.tensor_parallel_size > 1:
            from trtllm_compile.parallel.launch import start_group

            runner_kwargs["build_in_turn"] = config.build_in_turn
            self._group = start_group(model, config.tensor_parallel_size, runner_kwargs, model_source, device_type)
            self.runner = self._group.runner
        elif config.tensor_parallel_size == 1:
            self.runner = ModelRunner(model, **runner_kwargs)
        else:
            raise ValueError(f"tensor_parallel_size must be >= 1, not {config.tensor_parallel_size}")
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size)
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        self.scheduler = Scheduler(
            self.block_manager,
            config.max_batch_size,
            config.max_num_tokens,
            eos_token_id=eos,
            max_seq_len=self.max_seq_len,
        )
        self._requests: dict[str, Request] = {}
        self._generators: dict[str, torch.Generator | None] = {}
        self._detokenizers: dict[str, IncrementalDetokenizer] = {}
        self._ids = itertools.count()
        self._overlap = config.overlap_scheduling
        self._in_flight: _LaunchedStep | None = None

    @property
    def report(self):
        return self.runner.step.report

    def close(self) -> None:
        """Stop the tensor-parallel ranks this engine started (nothing to do on one device)."""
        if self._group is not None:
            self._group.close()

    def add_request(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a request; it joins the running batch at the next step with room for it."""
        token_ids = self._encode(prompt)
        request_id = request_id or f"req-{next(self._ids)}"
        request = Request(request_id, token_ids, params or SamplingParams())
        self.scheduler.add(request)  # raises ValueError for prompts that can never fit
        self._requests[request_id] = request
        self._generators[request_id] = make_generator(request.params, self.runner.device)
        self._detokenizers[request_id] = IncrementalDetokenizer()
        return request_id

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids or give the engine a tokenizer")
            return self.tokenizer(prompt)["input_ids"]
        token_ids = list(prompt)
        outside = [i for i in token_ids if not 0 <= i < self.vocab_size]
        if outside:  # an embedding lookup past the table would fail the step of every request in the batch
            raise ValueError(
                f"prompt token ids must be in [0, {self.vocab_size}) (the model's vocabulary): {outside[:8]}"
            )
        return token_ids

    def run_to_completion(
        self,
        requests: Iterable[tuple[str | list[int], SamplingParams | None]],
        on_output: Callable[[RequestOutput], None] | None = None,
    ) -> list[RequestOutput]:
        """Queue the (prompt, params) `requests` and step until each has finished: their final outputs, in order.
        `on_output` sees every output the steps return. If this raises (a bad prompt, an interrupt), none of these
        requests stays behind in the engine."""
        ids: list[str] = []
        final: dict[str, RequestOutput] = {}
        try:
            ids.extend(self.add_request(prompt, params) for prompt, params in requests)
            ours = set(ids)
            while len(final) < len(ids):
                for output in self.step():
                    if on_output is not None:
                        on_output(output)
                    if output.finished and output.request_id in ours:
                        final[output.request_id] = output
        except BaseException:
            for request_id in ids:
                if request_id not in final:
                    self.abort(request_id)
            raise
        return [final[i] for i in ids]

    def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)
        self._forget(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        """Launch one batched model step; returns an output for every request that advanced in the step read
        back now (the one launched by the previous call, with overlap scheduling; else this one)."""
        with _heap_frozen():
            return self._step()

    def _step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        previous = self._in_flight.feeding(batch) if self._in_flight is not None else None
        outputs = []
        # only a repetition penalty makes sampling read history, which needs every earlier token on the host
        penalized = any(seq.request.params.repetition_penalty != 1.0 for seq in batch.sequences)
        if penalized:
            outputs += self._read_back()
        launched = self._launch(batch, previous, penalized) if batch.sequences else None
        outputs += self._read_back()
        self._in_flight = launched
        if not self._overlap:
            outputs += self._read_back()
        return outputs

    def _launch(self, batch: ScheduledBatch, previous: PendingTokens | None, penalized: bool) -> _LaunchedStep:
        logits = self.runner.execute(batch, previous)
        requests = [seq.request for seq in batch.sequences]
        params = [r.params for r in requests]
        if not penalized and all(p.is_greedy for p in params):
            token_ids = self.runner.greedy_tokens(logits)  # a decode graph computed them
        else:
            token_ids = sample(
                logits,
                params,
                [self._generators.get(r.request_id) for r in requests],  # gone: finished by the read-back above
                [r.all_token_ids for r in requests] if penalized else None,
            )
        self.runner.publish_sampled(token_ids)
        self.scheduler.advance(batch)
        if token_ids.device.type != "cuda":
            return _LaunchedStep(batch, token_ids, token_ids, None)
        host = torch.empty(token_ids.shape, dtype=token_ids.dtype, pin_memory=True)
        host.copy_(token_ids, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        return _LaunchedStep(batch, token_ids, host, copied)

    def _read_back(self) -> list[RequestOutput]:
        """Wait for the step in flight's tokens and record them; outputs of the requests it advanced."""
        step, self._in_flight = self._in_flight, None
        if step is None:
            return []
        if step.copied is not None:
            step.copied.synchronize()
        requests = [seq.request for seq in step.batch.sequences]
        advanced = [r for r in requests if not r.is_finished]  # the others finished while it was in flight
        self.scheduler.resolve(step.batch, step.host_token_ids.tolist())
        return [self._output(request) for request in advanced]

    def _output(self, request: Request) -> RequestOutput:
        detokenizer = self._detokenizers[request.request_id]
        text = self._text(request, detokenizer) if self.tokenizer is not None else ""
        settled = text
        if not request.is_finished:
            # Stream only text that stays, so the deltas concatenate to the final text: not a character whose
            # last byte is still to come (U+FFFD), nor the last len(stop) - 1 characters, which a stop string
            # completed by the next tokens would cut off.
            holdback = max(map(len, request.params.stop), default=1) - 1
            settled = text.rstrip("\ufffd")
            settled = settled[: max(len(settled) - holdback, 0)]
        new_text = settled[detokenizer.sent :]
        detokenizer.sent += len(new_text)
        output = RequestOutput(
            request.request_id,
            request.prompt_token_ids,
            list(request.output_token_ids),
            text,
            new_text=new_text,
            finished=request.is_finished,
            finish_reason=request.finish_reason,
        )
        if request.is_finished:
            self._forget(request.request_id)
        return output

    def _text(self, request: Request, detokenizer: IncrementalDetokenizer) -> str:
        """The request's text so far, cut at a stop string, which finishes it."""
        stops = request.params.stop
        if not request.is_finished:
            searched = len(detokenizer.text)  # the text before this step's tokens, searched for stops before
            text = detokenizer.decode(self.tokenizer, request.output_token_ids)
            if find_stop(text, stops, searched) < 0:
                return text
            self.scheduler.finish(request.request_id, "stop")
        # Once, when finished: the whole output, so the final text is the tokenizer's even where its decode reaches
        # further back than the detokenizer's window.
        text = self.tokenizer.decode(request.output_token_ids, skip_special_tokens=True)
        stop_at = find_stop(text, stops)
        return text if stop_at < 0 else text[:stop_at]

    def _forget(self, request_id: str) -> None:
        self._requests.pop(request_id, None)
        self._generators.pop(request_id, None)
        self._detokenizers.pop(request_id, None)
