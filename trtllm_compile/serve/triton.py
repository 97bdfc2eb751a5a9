"""Triton Inference Server deployment through PyTriton: `trtllm-compile triton [MODEL ...]`.

Each model is served twice on the same in-flight batching engine:
- `<name>`: one-shot generation with Triton's dynamic batcher (HTTP/gRPC infer, HTTP `/generate`);
- `<name>_stream`: a decoupled model that sends one response per generated token (gRPC streaming, HTTP
  `/generate_stream` SSE).

Inputs: `text_input` (bytes), optional `max_tokens` (int32), `temperature`, `top_p` (fp32), `top_k` (int32).
Outputs: `text_output` (bytes; the whole text, or each response's new text when streaming), `num_tokens`
(int32), `finish_reason` (bytes: stop, length, or `error: <why>` for a request that was rejected; one bad
request of a dynamic batch must not fail the others, so it is answered this way instead of raising).
SIGINT or SIGTERM stops the server; SIGUSR1 writes every thread's stack to stderr.

PyTriton 0.7.0 needs numpy < 2, so it lives in its own virtual environment (`trtllm-compile triton --setup`
makes one beside the model cache, sharing this environment's packages); the command re-runs itself there.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import faulthandler
import logging
import os
import signal
import subprocess
import sys
import sysconfig
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from trtllm_compile.models import model_folder
from trtllm_compile.runtime.engine import LLMEngine, RequestOutput
from trtllm_compile.runtime.sampling import SamplingParams
from trtllm_compile.serve.async_engine import AsyncEngine

logger = logging.getLogger(__name__)

# Must match the `tritonserver` extra in pyproject.toml.
TRITON_REQUIREMENTS = ("nvidia-pytriton==0.7.0", "numpy<2")
DEFAULT_MAX_TOKENS = 16


def triton_venv() -> Path:
    from trtllm_compile.models import cache_dir

    return Path(os.environ.get("TRTLLM_COMPILE_TRITON_VENV", cache_dir() / "triton-venv"))


def setup_venv() -> Path:
    """Make (or update) the PyTriton virtual environment; it sees this environment's packages (torch, us)."""
    venv = triton_venv()
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", *TRITON_REQUIREMENTS], check=True)
    return venv


def pytriton_available() -> bool:
    try:
        import numpy
        import pytriton  # noqa: F401
    except ImportError:
        return False
    return int(numpy.__version__.split(".")[0]) < 2


def triton_environment() -> dict[str, str]:
    """The environment for Triton's Python backend stub: it links libpython3.x.so, which must be this Python's
    (a Debian libpython with pyenv's standard library fails at model load), so put our LIBDIR first."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and list(Path(libdir).glob("libpython3*.so*")):
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libdir, env.get("LD_LIBRARY_PATH")]))
    return env


class EngineLoop:
    """One engine behind its own event loop thread, usable from any thread or loop (PyTriton runs each model
    instance's callables on a loop of its own)."""

    def __init__(self, engine: LLMEngine, tokenizer, max_queue: int = 256):
        self.tokenizer = copy.deepcopy(tokenizer)  # encodes on this loop; the engine thread decodes with its own
        self.loop = asyncio.new_event_loop()
        self.engine = AsyncEngine(engine, max_queue)
        self._thread = threading.Thread(target=self.loop.run_forever, name="trtllm-triton-loop", daemon=True)
        self._thread.start()
        self._call(self._start()).result()

    async def _start(self) -> None:
        self.engine.start()

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.engine.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)

    async def stream(self, prompt: str, params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Every output of one request, on the caller's loop; aborts the request if the caller stops early."""

        async def add():
            sink: asyncio.Queue = asyncio.Queue()
            return await self.engine.add(self.tokenizer(prompt)["input_ids"], params, sink), sink

        request_id, sink = await asyncio.wrap_future(self._call(add()))
        try:
            while True:
                item = await asyncio.wrap_future(self._call(sink.get()))
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            self.loop.call_soon_threadsafe(self.engine.abort, request_id)


def _scalar(request, name: str, row: int, default):
    if name not in request.keys():
        return default
    value = request[name]
    return value.reshape(value.shape[0], -1)[row][0].item() if value.ndim > 1 else value.reshape(-1)[0].item()


def _params(request, row: int, context: int) -> SamplingParams:
    max_tokens = int(_scalar(request, "max_tokens", row, DEFAULT_MAX_TOKENS))
    if max_tokens >= context:
        raise ValueError(f"max_tokens={max_tokens} does not fit the context of {context} tokens")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=float(_scalar(request, "temperature", row, 1.0)),
        top_p=float(_scalar(request, "top_p", row, 1.0)),
        top_k=int(_scalar(request, "top_k", row, 0)),
    )


def _text(request, row: int) -> str:
    value = request["text_input"]
    value = value.reshape(value.shape[0], -1)[row][0] if value.ndim > 1 else value.reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TritonModel:
    """The two PyTriton callables of one model (see the module docstring)."""

    def __init__(self, engine_loop: EngineLoop, context: int):
        self.engine_loop, self.context = engine_loop, context

    async def _final(self, request, row: int) -> tuple[str, int, str]:
        try:
            params = _params(request, row, self.context)
            async for out in self.engine_loop.stream(_text(request, row), params):
                if out.finished:
                    return out.text, len(out.token_ids), out.finish_reason or "stop"
        except (ValueError, UnicodeDecodeError, RuntimeError) as error:
            return "", 0, f"error: {error}"
        return "", 0, "error: no output"

    async def generate(self, requests: list) -> list[dict]:
        import numpy as np

        async def one(request) -> dict:
            rows = await asyncio.gather(*(self._final(request, r) for r in range(request["text_input"].shape[0])))
            return {
                "text_output": np.array([[t.encode()] for t, _, _ in rows], dtype=object),
                "num_tokens": np.array([[n] for _, n, _ in rows], dtype=np.int32),
                "finish_reason": np.array([[f.encode()] for _, _, f in rows], dtype=object),
            }

        return list(await asyncio.gather(*(one(r) for r in requests)))

    async def generate_stream(self, requests: list) -> AsyncIterator[list[dict]]:
        import numpy as np

        def response(text: str, num_tokens: int, reason: str | None) -> list[dict]:
            return [
                {
                    "text_output": np.array([text.encode()], dtype=object),
                    "num_tokens": np.array([num_tokens], dtype=np.int32),
                    "finish_reason": np.array([(reason or "").encode()], dtype=object),
                }
            ]

        for request in requests:  # the stream model does not batch: one request per call
            try:
                params = _params(request, 0, self.context)
                async for out in self.engine_loop.stream(_text(request, 0), params):
                    if out.new_text or out.finished:
                        yield response(out.new_text, len(out.token_ids), out.finish_reason)
            except (ValueError, UnicodeDecodeError, RuntimeError) as error:
                yield response("", 0, f"error: {error}")


def serve_triton(args: argparse.Namespace) -> int:
    if getattr(args, "setup", False):
        print(f"PyTriton environment ready: {setup_venv()}")
        return 0
    for model in args.models:  # before Triton starts (and waits out its timeout to stop)
        model_folder(model)
    if not pytriton_available():
        python = triton_venv() / "bin" / "python"
        if not python.exists():
            raise FileNotFoundError(
                f"PyTriton (with numpy < 2) is not importable here and {python} does not exist; run "
                f"`trtllm-compile triton --setup` once to make its environment"
            )
        logger.info("re-running under %s (PyTriton needs numpy < 2)", python)
        os.execve(python, [str(python), "-m", "trtllm_compile.cli", *sys.argv[1:]], triton_environment())
    os.environ.update(triton_environment())  # the Triton server process inherits it
    return _run(args)


# Appended to PyTriton 0.7's proxy `communication.py` (the file Triton's Python backend runs for each model
# instance). Triton starts a model's instances in parallel, and PyTriton's second instance dials the first one's
# handshake socket as soon as the socket file exists, which is between the first one's bind() and listen(): on
# a busy machine the load fails with "Connection refused". The wrapper retries refused connections for a while.
HANDSHAKE_RETRY = """

# trtllm_compile: retry the handshake while the first instance's socket is bound but not yet listening.
_get_config_once = get_config_from_handshake_server


def get_config_from_handshake_server(socket_path, timeout_s=1.0):
    deadline = time.time() + 60.0
    while True:
        try:
            return _get_config_once(socket_path, timeout_s)
        except ConnectionRefusedError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
"""


def patch_pytriton_handshake() -> None:
    """Ship HANDSHAKE_RETRY with every model PyTriton loads into Triton (idempotent)."""
    from pytriton.models.model import Model

    original = Model.get_proxy_model_files
    if getattr(original, "handshake_retry", False):
        return

    def get_proxy_model_files(self) -> dict[str, bytes]:
        files = original(self)
        (key,) = [name for name in files if name.endswith("/communication.py")]
        files[key] += HANDSHAKE_RETRY.encode()
        return files

    get_proxy_model_files.handshake_retry = True
    Model.get_proxy_model_files = get_proxy_model_files


def stop_on_signals() -> None:
    """SIGINT and SIGTERM stop the server cleanly; SIGUSR1 writes every thread's stack to stderr.

    PyTriton's `serve()` stops Triton (and frees its shared memory) on KeyboardInterrupt only. A server started
    as a background job of a script inherits SIGINT ignored, and Python then never raises it (such a server
    ignored SIGINT until killed, leaving its shared memory behind); SIGTERM, what `docker stop` and process
    managers send, would end the process without the stop. Both now raise KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # where a server that does not stop is waiting


def _run(args: argparse.Namespace) -> int:
    import numpy as np
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from trtllm_compile.cli import DTYPES
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.serve.cli import engine_kwargs, served_name

    inputs = [
        Tensor(name="text_input", dtype=bytes, shape=(1,)),
        Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
        Tensor(name="temperature", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="top_p", dtype=np.float32, shape=(1,), optional=True),
        Tensor(name="top_k", dtype=np.int32, shape=(1,), optional=True),
    ]
    outputs = [
        Tensor(name="text_output", dtype=bytes, shape=(1,)),
        Tensor(name="num_tokens", dtype=np.int32, shape=(1,)),
        Tensor(name="finish_reason", dtype=bytes, shape=(1,)),
    ]
    host = args.host
    config = TritonConfig(
        http_address=host,
        http_port=args.http_port,
        grpc_address=host,
        grpc_port=args.grpc_port,
        metrics_address=host,
        metrics_port=args.metrics_port,
    )
    if args.tp > 1 and len(args.models) > 1:  # one torch.distributed group per process
        raise ValueError(f"--tp {args.tp} serves one model per process; start one `trtllm-compile triton` per model")
    loops, llms = [], []
    stop_on_signals()
    patch_pytriton_handshake()
    with Triton(config=config) as triton:
        for model_path in args.models or [None]:
            llms.append(LLM(model_path, dtype=DTYPES[args.dtype], device=args.device, **engine_kwargs(args)))
            llm = llms[-1]
            loops.append(EngineLoop(llm.engine, llm.tokenizer))
            model = TritonModel(loops[-1], llm.engine.max_seq_len)
            name = served_name(model_path)
            batch = ModelConfig(
                max_batch_size=args.max_batch_size, batcher=DynamicBatcher(max_queue_delay_microseconds=2000)
            )
            # Several instances: each runs one dynamic batch at a time, and the engine batches them all in flight.
            triton.bind(name, [model.generate] * args.instances, inputs, outputs, config=batch, strict=True)
            stream = ModelConfig(batching=False, decoupled=True)
            triton.bind(f"{name}_stream", [model.generate_stream] * args.instances, inputs, outputs, config=stream)
            print(f"model {name}: one-shot `{name}`, streaming `{name}_stream`", flush=True)
        print(
            f"Triton on {host}: HTTP {args.http_port}, gRPC {args.grpc_port}, metrics {args.metrics_port}", flush=True
        )
        try:
            triton.serve()  # until SIGINT/SIGTERM (stop_on_signals); leaving the `with` frees Triton's shared memory
        finally:
            for loop in loops:
                loop.close()
            for llm in llms:
                llm.close()
    return 0
