"""`trtllm-compile`: the command line. Subcommands print their results; library code only logs."""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="local Hugging Face folder (default: SmolLM2-135M)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def _timed_generate(generate, batch, max_new_tokens: int) -> tuple[torch.Tensor, float]:
    start = time.perf_counter()
    with torch.no_grad():
        out = generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out, time.perf_counter() - start


def run(args: argparse.Namespace) -> int:
    """Generate with eager PyTorch and with the compiled model; print both texts' timing and the report."""
    from trtllm_compile import compile, load_model
    from trtllm_compile.runtime.engine import EngineConfig

    model, tokenizer = load_model(args.model, dtype=DTYPES[args.dtype], device=args.device)
    prompt = args.prompt
    if args.chat and tokenizer.chat_template:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    batch = tokenizer(prompt, return_tensors="pt").to(args.device)
    prompt_len = batch["input_ids"].shape[1]
    needed = prompt_len + args.max_new_tokens
    context = getattr(model.config, "max_position_embeddings", needed)
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if needed > context:  # checked before eager runs it
        raise ValueError(
            f"the prompt ({prompt_len} tokens) and --max-new-tokens {args.max_new_tokens} need {needed} positions, "
            f"the model has {context}: shorten the prompt or lower --max-new-tokens"
        )

    _timed_generate(model.generate, batch, 2)  # warm-up, so eager is not charged for first-call costs
    eager_out, eager_s = _timed_generate(model.generate, batch, args.max_new_tokens)
    compiled = compile(model, max_num_tokens=max(EngineConfig.max_num_tokens, needed))  # a long prompt fits
    first_out, first_s = _timed_generate(compiled.generate, batch, args.max_new_tokens)
    compiled_out, compiled_s = _timed_generate(compiled.generate, batch, args.max_new_tokens)

    new_tokens = compiled_out.shape[1] - prompt_len
    print(tokenizer.decode(compiled_out[0, prompt_len:], skip_special_tokens=True))
    print()
    print(f"{'':<28}{'seconds':>10}{'tokens/s':>12}")
    for name, seconds in (("eager PyTorch", eager_s), ("compiled, first call", first_s), ("compiled", compiled_s)):
        print(f"{name:<28}{seconds:>10.2f}{new_tokens / seconds:>12.1f}")
    same = torch.equal(eager_out, compiled_out) and torch.equal(first_out, compiled_out)
    print(f"greedy tokens identical to eager: {'yes' if same else 'NO'}")
    print(compiled.report)
    return 0 if same else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trtllm-compile", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each compile step")
    commands = parser.add_subparsers(dest="command", required=True)

    run_parser = commands.add_parser("run", help="compile a model and generate, timed against eager PyTorch")
    run_parser.add_argument("prompt")
    _add_model_args(run_parser)
    run_parser.add_argument("--max-new-tokens", type=int, default=32)
    run_parser.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    run_parser.set_defaults(handler=run)

    from trtllm_compile.bench.cli import add_parser as add_bench_parser

    add_bench_parser(commands, _add_model_args)

    from trtllm_compile.tensorrt.cli import add_build_parser

    add_build_parser(commands)

    from trtllm_compile.serve.cli import add_parsers as add_serve_parsers

    add_serve_parsers(commands, _add_model_args)

    from trtllm_compile.quantization.cli import add_parsers as add_quantization_parsers

    add_quantization_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    from trtllm_compile.tensorrt.runtime import TensorRTRuntimeUnavailableError
    from trtllm_compile.tensorrt.trt import TensorRTUnavailableError

    try:
        return args.handler(args)
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        NotImplementedError,  # includes a missing TensorRT converter
        TensorRTUnavailableError,
        TensorRTRuntimeUnavailableError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
