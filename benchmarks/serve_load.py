"""Bounded load test of the OpenAI server: N concurrent streaming clients, a few requests each, several rounds.

Starts `trtllm-compile serve` as a subprocess on a free loopback port, first runs every prompt alone (one request
at a time, greedy) for reference answers, then runs the rounds and checks: 0 failed requests, every answer equal
to its reference, 0 KV blocks in use after each round, and the server's resident memory not growing from round
to round (after the first, which warms allocators up). Prints a summary; exits 1 if a check fails.

    python benchmarks/serve_load.py                      # 64 clients x 3 requests x 3 rounds, 16 tokens each
    python benchmarks/serve_load.py --clients 8 --rounds 2 --max-tokens 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

import httpx

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "import numpy as np\n",
    "Water boils at",
    "The quick brown fox",
]
CHATS = [
    "Hi! Who are you?",
    "Name three fruits.",
    "What is 2 + 2?",
    "Write a haiku about the sea.",
    "Give me a word that rhymes with cat.",
    "What is the capital of Italy?",
    "Say hello in Spanish.",
    "What color is the sky?",
]
JOBS = [("completion", p) for p in PROMPTS] + [("chat", c) for c in CHATS]
MEMORY_TOLERANCE_MIB = 64  # allocator noise on a ~1.5 GiB process; a leak per request would far exceed it


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="local Hugging Face folder (default: the embedded SmolLM2-135M)")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--requests-per-client", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--num-blocks", type=int, default=512, help="KV cache blocks of 16 tokens")
    parser.add_argument("--deadline", type=float, default=1800.0, help="seconds for the whole run, start-up included")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def request_for(kind: str, prompt: str, max_tokens: int) -> tuple[str, dict]:
    body = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    if kind == "completion":
        return "/v1/completions", {**body, "prompt": prompt}
    return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}


async def stream_one(client: httpx.AsyncClient, kind: str, prompt: str, max_tokens: int) -> dict:
    """One streaming request: its text, token-chunk timings, or an error string."""
    path, body = request_for(kind, prompt, max_tokens)
    start, chunks, pieces, tokens, done = time.perf_counter(), [], [], 0, False
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                    break
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if "error" in event:
                        return {"error": f"stream error: {event['error']['message']}"}
                    tokens = (event.get("usage") or {}).get("completion_tokens", tokens)
                    for choice in event["choices"]:
                        piece = choice.get("text") or choice.get("delta", {}).get("content") or ""
                        pieces.append(piece)
                        if piece:  # a chat stream opens with an empty role chunk: not a token
                            chunks.append(time.perf_counter())
    except httpx.HTTPError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    if not done:
        return {"error": "stream ended without [DONE]"}
    return {"text": "".join(pieces), "start": start, "chunks": chunks, "tokens": tokens}


async def kv_blocks_used(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    return float(next(x for x in metrics.splitlines() if x.startswith("trtllm_kv_cache_blocks_used ")).split()[1])


async def wait_idle(client: httpx.AsyncClient, timeout: float = 60.0) -> float:
    """KV blocks in use once the server has settled (0 expected), polled for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    used = await kv_blocks_used(client)
    while used and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        used = await kv_blocks_used(client)
    return used


async def run_round(client, args, references: dict) -> dict:
    async def one_client(c: int) -> list[dict]:
        results = []
        for r in range(args.requests_per_client):
            kind, prompt = JOBS[(c * args.requests_per_client + r) % len(JOBS)]
            result = await stream_one(client, kind, prompt, args.max_tokens)
            result["expected"] = references[(kind, prompt)]
            results.append(result)
        return results

    start = time.perf_counter()
    per_client = await asyncio.gather(*(one_client(c) for c in range(args.clients)))
    results = [r for rs in per_client for r in rs]
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    mismatches = [r for r in ok if r["text"] != r["expected"]]
    ttfts = [r["chunks"][0] - r["start"] for r in ok if r["chunks"]]
    tpots = [(r["chunks"][-1] - r["chunks"][0]) / (len(r["chunks"]) - 1) for r in ok if len(r["chunks"]) > 1]
    return {
        "requests": len(results),
        "failures": len(errors),
        "first_errors": errors[:3],
        "mismatches": len(mismatches),
        "tokens": sum(r["tokens"] for r in ok),
        "wall_s": wall,
        "ttft_p50": statistics.median(ttfts) if ttfts else float("nan"),
        "ttft_max": max(ttfts, default=float("nan")),
        "tpot_p50": statistics.median(tpots) if tpots else float("nan"),
    }


async def main_async(args: argparse.Namespace, base_url: str, pid: int) -> int:
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=base_url, timeout=600.0, limits=limits) as client:
        started = time.perf_counter()
        references = {}
        for kind, prompt in JOBS:  # each prompt alone: nothing else in the batch
            result = await stream_one(client, kind, prompt, args.max_tokens)
            if "error" in result:
                print(f"reference run failed for {kind} {prompt!r}: {result['error']}")
                return 1
            references[(kind, prompt)] = result["text"]
        print(f"references: {len(JOBS)} prompts run alone in {time.perf_counter() - started:.1f} s")

        rounds, memory = [], [rss_mib(pid)]
        for index in range(args.rounds):
            summary = await run_round(client, args, references)
            summary["kv_blocks_after"] = await wait_idle(client)
            memory.append(rss_mib(pid))
            rounds.append(summary)
            print(
                f"round {index + 1}: {summary['requests']} requests from {args.clients} clients in "
                f"{summary['wall_s']:.1f} s, failures {summary['failures']}, mismatches {summary['mismatches']}, "
                f"{summary['tokens'] / summary['wall_s']:.1f} tokens/s, TTFT p50 {summary['ttft_p50']:.2f} s "
                f"(max {summary['ttft_max']:.2f} s), TPOT p50 {summary['tpot_p50'] * 1000:.0f} ms, KV blocks in "
                f"use after {summary['kv_blocks_after']:.0f}, server RSS {memory[-1]:.0f} MiB"
            )
            for error in summary["first_errors"]:
                print(f"  error: {error}")

    growth = memory[-1] - memory[1] if len(memory) > 2 else 0.0
    checks = {
        "0 failures": all(r["failures"] == 0 for r in rounds),
        "outputs equal to alone": all(r["mismatches"] == 0 for r in rounds),
        "0 KV blocks in use after every round": all(r["kv_blocks_after"] == 0 for r in rounds),
        f"RSS growth after round 1 <= {MEMORY_TOLERANCE_MIB} MiB ({growth:+.0f} MiB)": growth <= MEMORY_TOLERANCE_MIB,
    }
    total = sum(r["requests"] for r in rounds)
    print(f"\n{total} streaming requests, {args.clients} concurrent clients, {args.max_tokens} tokens max, greedy")
    print("server RSS per round (MiB, before the first): " + ", ".join(f"{m:.0f}" for m in memory))
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


def main() -> int:
    args = parse_args()
    port = free_port()
    command = [sys.executable, "-m", "trtllm_compile.cli", "serve", *([args.model] if args.model else [])]
    command += ["--port", str(port), "--max-batch-size", str(args.max_batch_size), "--num-blocks", str(args.num_blocks)]
    command += ["--max-queue", str(args.clients), "--log-level", "warning"]
    env = {k: v for k, v in os.environ.items() if k != "TRTLLM_COMPILE_API_KEY"}
    server = subprocess.Popen(command, env=env)
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + args.deadline
        while True:  # bounded: the deadline, or the server exiting
            if server.poll() is not None:
                print(f"the server exited with {server.returncode} before it was up")
                return 1
            try:
                if httpx.get(f"{base_url}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                print("the server did not come up before the deadline")
                return 1
            time.sleep(0.5)
        print(f"server up on {base_url} (pid {server.pid}) after {time.monotonic() - deadline + args.deadline:.0f} s")
        remaining = deadline - time.monotonic()
        return asyncio.run(asyncio.wait_for(main_async(args, base_url, server.pid), remaining))
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown: the engine thread stops, blocks freed
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    sys.exit(main())
