"""The `serve` (OpenAI-compatible HTTP) and `triton` (Triton Inference Server) subcommands."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


def port(text: str) -> int:
    """An argparse type: a TCP port number (0: any free port the OS picks)."""
    number = int(text)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535, not {number}")
    return number


def add_parsers(commands, add_model_args) -> None:
    parser = commands.add_parser("serve", help="OpenAI-compatible HTTP server (completions, chat, SSE streaming)")
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    parser.add_argument("--port", type=port, default=8000)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("TRTLLM_COMPILE_API_KEY"),
        help="require `Authorization: Bearer KEY` on /v1 routes (default: $TRTLLM_COMPILE_API_KEY, else none)",
    )
    parser.add_argument("--served-model-name", help="the model id clients send (default: the model folder's name)")
    _add_engine_args(parser)
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting beyond the batch before 503")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.set_defaults(handler=run_serve)

    triton = commands.add_parser("triton", help="serve models through Triton Inference Server (nvidia-pytriton)")
    triton.add_argument("models", nargs="*", help="local Hugging Face folders (default: SmolLM2-135M)")
    triton.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    triton.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    triton.add_argument("--http-port", type=port, default=8000)
    triton.add_argument("--grpc-port", type=port, default=8001)
    triton.add_argument("--metrics-port", type=port, default=8002)
    triton.add_argument("--host", default="127.0.0.1", help="interface Triton binds (default: loopback only)")
    triton.add_argument("--instances", type=int, default=4, help="PyTriton instances per model (concurrent batches)")
    triton.add_argument("--setup", action="store_true", help="make the PyTriton virtual environment, then exit")
    _add_engine_args(triton)
    triton.set_defaults(handler=run_triton)


def _add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-batch-size", type=int, default=64, help="requests decoded together per step")
    parser.add_argument("--max-num-tokens", type=int, default=2048, help="tokens per step; also the context")
    parser.add_argument(
        "--num-blocks",
        type=int,
        help="KV cache blocks of 16 tokens (default: fill GPU memory; on CPU, a full batch of full contexts)",
    )
    parser.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks (one GPU each; CPU: gloo)")


def served_name(model: str | None) -> str:
    from trtllm_compile.models import DEFAULT_MODEL_NAME

    return Path(model).name if model else DEFAULT_MODEL_NAME


def engine_kwargs(args: argparse.Namespace) -> dict:
    kwargs = {"max_batch_size": args.max_batch_size, "max_num_tokens": args.max_num_tokens}
    if args.tp != 1:
        kwargs["tensor_parallel_size"] = args.tp
    if args.num_blocks is not None:
        kwargs["num_blocks"] = args.num_blocks
    return kwargs


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from trtllm_compile.cli import DTYPES
    from trtllm_compile.runtime.llm import LLM
    from trtllm_compile.serve.app import ServerConfig, build_app

    with LLM(args.model, dtype=DTYPES[args.dtype], device=args.device, **engine_kwargs(args)) as llm:
        config = ServerConfig(args.served_model_name or served_name(args.model), args.api_key, args.max_queue)
        app = build_app(llm.engine, llm.tokenizer, config)
        print(f"serving {config.served_model_name} on http://{args.host}:{args.port}/v1", flush=True)
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0


def run_triton(args: argparse.Namespace) -> int:
    from trtllm_compile.serve.triton import serve_triton

    return serve_triton(args)
