"""The OpenAI-compatible HTTP server: FastAPI routes over the in-flight batching engine.

`/v1/completions`, `/v1/chat/completions` (both with SSE streaming), `/v1/models`, `/health`, `/metrics`.
Every error is OpenAI's `{"error": {...}}` JSON; a bad request never reaches the engine, so it cannot disturb
the requests running beside it. A client that goes away (mid-stream or not) has its request aborted, which
frees its KV blocks before the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from trtllm_compile.runtime.engine import LLMEngine, RequestOutput
from trtllm_compile.runtime.sampling import SamplingParams
from trtllm_compile.serve import protocol
from trtllm_compile.serve.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from trtllm_compile.serve.metrics import ServerMetrics
from trtllm_compile.serve.protocol import ChatCompletionRequest, CompletionRequest, OpenAIError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 << 20
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to the rest of the context


@dataclass
class ServerConfig:
    served_model_name: str
    api_key: str | None = None
    max_queue: int = 256  # requests allowed to wait beyond the running batch before answering 503
    disconnect_poll_s: float = 0.25  # how often a non-streaming request checks that its client is still there


class _Aborting(StreamingResponse):
    """A streaming response that aborts its engine requests however it ends (done, disconnect, error)."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Timing:
    def __init__(self, start: float):
        self.start, self.first, self.last = start, None, start

    def tick(self) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last = now


class OpenAIServer:
    def __init__(self, engine: LLMEngine, tokenizer, config: ServerConfig):
        if tokenizer is None:
            raise ValueError("the OpenAI server needs a tokenizer; load the model with its tokenizer")
        self.engine = engine
        # The engine thread decodes with `engine.tokenizer`; this copy encodes on the event loop, so the two
        # threads never share one Rust tokenizer (which is not safe to use from two threads at once).
        self.tokenizer = copy.deepcopy(tokenizer)
        self.config = config
        self.metrics = ServerMetrics(config.served_model_name)
        self.async_engine = AsyncEngine(engine, config.max_queue, on_step=self.metrics.on_step)
        self.vocab_size = len(tokenizer)
        self.created = int(time.time())

    # ---- request checks ------------------------------------------------------------------------------------

    def check_auth(self, request: Request) -> None:
        if self.config.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), self.config.api_key):
            raise OpenAIError(
                "missing or incorrect API key: send the header `Authorization: Bearer <key>`",
                status=401,
                code="invalid_api_key",
            )

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.config.served_model_name:
            raise OpenAIError(
                f"The model `{model}` does not exist; this server serves `{self.config.served_model_name}`",
                status=404,
                param="model",
                code="model_not_found",
            )

    def encode(self, prompt: str | list[int], param: str = "prompt") -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt)["input_ids"]
        bad = [t for t in prompt if not 0 <= t < self.vocab_size]
        if bad:
            raise OpenAIError(f"token id {bad[0]} is out of the vocabulary [0, {self.vocab_size})", param=param)
        return list(prompt)

    def max_tokens(self, prompt_len: int, requested: int | None, default: int | None) -> int:
        context = self.engine.max_seq_len
        room = context - prompt_len
        if room < 1:
            raise OpenAIError(
                f"This model's maximum context length is {context} tokens, but the prompt has {prompt_len} "
                f"tokens (with no room left to generate); shorten the prompt",
                param="messages" if default is None else "prompt",
                code="context_length_exceeded",
            )
        if requested is not None and requested > room:
            raise OpenAIError(
                f"max_tokens={requested} is too large: the prompt has {prompt_len} tokens and the context "
                f"{context}, so at most {room} tokens can be generated",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return requested or min(default or room, room)

    # ---- generation ----------------------------------------------------------------------------------------

    async def start(self, prompts: list[list[int]], params: SamplingParams, sink: asyncio.Queue) -> list[str]:
        """Hand every prompt to the engine; on any failure abort those already added and raise an OpenAIError."""
        ids: list[str] = []
        try:
            for token_ids in prompts:
                ids.append(await self.async_engine.add(token_ids, params, sink))
        except BaseException as error:
            for request_id in ids:
                self.async_engine.abort(request_id)
            if isinstance(error, QueueFullError):
                raise OpenAIError(str(error), status=503, type="server_error", code="queue_full") from None
            if isinstance(error, EngineDeadError):
                raise OpenAIError(str(error), status=503, type="server_error", code="engine_unavailable") from None
            if isinstance(error, ValueError):
                raise OpenAIError(str(error), param="prompt", code="invalid_prompt") from None
            raise
        self.metrics.prompt_tokens.inc(sum(len(p) for p in prompts))
        return ids

    async def outputs(
        self, ids: list[str], sink: asyncio.Queue, timings: list[_Timing]
    ) -> AsyncIterator[tuple[int, RequestOutput]]:
        """(prompt index, output) after every step that advanced one of `ids`, until all are finished."""
        index = {request_id: i for i, request_id in enumerate(ids)}
        remaining = len(ids)
        while remaining:
            item = await sink.get()
            if isinstance(item, BaseException):
                raise OpenAIError(str(item), status=503, type="server_error", code="engine_unavailable")
            i = index[item.request_id]
            timings[i].tick()
            if item.finished:
                remaining -= 1
                t = timings[i]
                ttft = t.first - t.start if t.first else None
                self.metrics.observe_request(
                    ttft, t.last - (t.first or t.last), len(item.token_ids), item.finish_reason
                )
            yield i, item

    def abort_all(self, ids: list[str]) -> Callable[[], None]:
        """A callback that aborts whichever of `ids` are still running (the client is gone or done)."""

        def abort() -> None:
            for request_id in ids:
                if self.async_engine.abort(request_id):
                    self.metrics.finished.labels(reason="abort").inc()

        return abort

    async def collect(self, request: Request, ids: list[str], sink, timings) -> dict[int, RequestOutput]:
        """Wait for every request's final output; abort them if the client disconnects first."""

        async def final() -> dict[int, RequestOutput]:
            return {i: out async for i, out in self.outputs(ids, sink, timings) if out.finished}

        task = asyncio.ensure_future(final())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.config.disconnect_poll_s)
                if done:
                    return task.result()
                if await request.is_disconnected():
                    logger.info("client disconnected; aborting %s", ids)
                    raise OpenAIError("client disconnected", status=499, code="client_disconnected")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.abort_all(ids)()

    async def read(self, request: Request, schema):
        self.check_auth(request)
        chunks, size = [], 0
        async for chunk in request.stream():  # capped while reading: a huge body is refused, not buffered
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise OpenAIError(f"request body exceeds {MAX_BODY_BYTES} bytes", status=413, code="body_too_large")
            chunks.append(chunk)
        parsed = protocol.parse_request(b"".join(chunks), schema)
        self.check_model(parsed.model)
        return parsed

    # ---- endpoints -----------------------------------------------------------------------------------------

    async def completions(self, request: Request) -> Response:
        start = time.perf_counter()
        req: CompletionRequest = await self.read(request, CompletionRequest)
        prompts = [self.encode(p) for p in req.prompts()]
        limits = [self.max_tokens(len(p), req.max_tokens, COMPLETION_DEFAULT_MAX_TOKENS) for p in prompts]
        params = req.sampling_params(min(limits))
        sink: asyncio.Queue = asyncio.Queue()
        ids = await self.start(prompts, params, sink)
        timings = [_Timing(start) for _ in ids]
        response_id, model = protocol.new_id("cmpl"), self.config.served_model_name
        if not req.stream:
            final = await self.collect(request, ids, sink, timings)
            choices = [protocol.completion_choice(i, final[i].text, final[i].finish_reason) for i in sorted(final)]
            completion = sum(len(out.token_ids) for out in final.values())
            body = protocol.envelope("text_completion", response_id, model, choices)
            body["usage"] = protocol.usage(sum(map(len, prompts)), completion)
            return JSONResponse(body)

        async def events() -> AsyncIterator[str]:
            completion = 0
            async for i, out in self.outputs(ids, sink, timings):
                if out.new_text or out.finished:
                    choice = protocol.completion_choice(i, out.new_text, out.finish_reason)
                    yield _sse(protocol.envelope("text_completion", response_id, model, [choice]))
                completion += len(out.token_ids) if out.finished else 0
            if req.stream_options and req.stream_options.include_usage:
                usage = protocol.usage(sum(map(len, prompts)), completion)
                yield _sse(protocol.envelope("text_completion", response_id, model, [], usage=usage))

        return _Aborting(_sse_stream(events()), self.abort_all(ids))

    async def chat_completions(self, request: Request) -> Response:
        start = time.perf_counter()
        req: ChatCompletionRequest = await self.read(request, ChatCompletionRequest)
        prompt = self.encode_chat_text(self.render_chat(req))
        params = req.sampling_params(self.max_tokens(len(prompt), req.requested_max_tokens, None))
        sink: asyncio.Queue = asyncio.Queue()
        ids = await self.start([prompt], params, sink)
        timings = [_Timing(start)]
        response_id, model = protocol.new_id("chatcmpl"), self.config.served_model_name
        if not req.stream:
            out = (await self.collect(request, ids, sink, timings))[0]
            choice = protocol.chat_choice(0, out.text, out.finish_reason, delta=False)
            body = protocol.envelope("chat.completion", response_id, model, [choice])
            body["usage"] = protocol.usage(len(prompt), len(out.token_ids))
            return JSONResponse(body)

        async def events() -> AsyncIterator[str]:
            first = protocol.chat_choice(0, "", None, delta=True, first=True)
            yield _sse(protocol.envelope("chat.completion.chunk", response_id, model, [first]))
            async for _, out in self.outputs(ids, sink, timings):
                if out.new_text or out.finished:
                    choice = protocol.chat_choice(0, out.new_text, out.finish_reason, delta=True)
                    yield _sse(protocol.envelope("chat.completion.chunk", response_id, model, [choice]))
                if out.finished and req.stream_options and req.stream_options.include_usage:
                    usage = protocol.usage(len(prompt), len(out.token_ids))
                    yield _sse(protocol.envelope("chat.completion.chunk", response_id, model, [], usage=usage))

        return _Aborting(_sse_stream(events()), self.abort_all(ids))

    def render_chat(self, req: ChatCompletionRequest) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIError("this model's tokenizer has no chat template; use /v1/completions", param="messages")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # the template itself rejects the conversation (e.g. role order)
            raise OpenAIError(f"the chat template rejected these messages: {error}", param="messages") from None

    def encode_chat_text(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def models(self, request: Request) -> Response:
        self.check_auth(request)
        model = {
            "id": self.config.served_model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "trtllm_compile",
            "max_model_len": self.engine.max_seq_len,
        }
        return JSONResponse({"object": "list", "data": [model]})

    async def health(self, request: Request) -> Response:
        if self.async_engine.is_alive:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "engine stopped", "error": repr(self.async_engine.error)}, status_code=503)

    async def render_metrics(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


async def _sse_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """The events, an error event if the engine fails mid-stream (the status is already sent), then [DONE]."""
    try:
        async for event in events:
            yield event
    except OpenAIError as error:
        yield _sse(error.body())
    yield "data: [DONE]\n\n"


def _counted(server: OpenAIServer, endpoint: str, handler):
    async def route(request: Request) -> Response:
        try:
            response = await handler(request)
        except OpenAIError as error:
            server.metrics.requests.labels(endpoint=endpoint, status=str(error.status)).inc()
            raise
        server.metrics.requests.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response

    return route


def build_app(engine: LLMEngine, tokenizer, config: ServerConfig) -> FastAPI:
    """The FastAPI app; its lifespan starts the engine thread and stops it (aborting what runs) on shutdown."""
    server = OpenAIServer(engine, tokenizer, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        server.async_engine.start()
        try:
            yield
        finally:
            server.async_engine.stop()

    app = FastAPI(title="trtllm_compile OpenAI-compatible server", lifespan=lifespan)
    app.state.server = server
    app.add_api_route("/v1/completions", _counted(server, "completions", server.completions), methods=["POST"])
    app.add_api_route("/v1/chat/completions", _counted(server, "chat", server.chat_completions), methods=["POST"])
    app.add_api_route("/v1/models", server.models, methods=["GET"])
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/metrics", server.render_metrics, methods=["GET"])

    @app.exception_handler(OpenAIError)
    async def openai_error(request: Request, error: OpenAIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        body = OpenAIError(str(error.detail), status=error.status_code, code=str(error.status_code)).body()
        return JSONResponse(body, status_code=error.status_code, headers=getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error in %s", request.url.path)
        body = OpenAIError(f"internal server error: {error!r}", status=500, type="server_error").body()
        return JSONResponse(body, status_code=500)

    return app
