"""Prometheus metrics of one server: requests, tokens, queue length, KV blocks, TTFT and TPOT.

Each server has its own registry, so several servers (tests, benchmarks) can live in one process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from trtllm_compile.serve.async_engine import EngineStats

# Buckets for a CPU-to-GPU range: a few ms per token on a GPU, up to seconds on a loaded CPU.
_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = registry = CollectorRegistry()
        labels = {"model": model_name}
        self.requests = Counter(
            "trtllm_requests",
            "HTTP generation requests by endpoint and status code",
            ["endpoint", "status"],
            registry=registry,
        )
        self.finished = Counter(
            "trtllm_requests_finished",
            "Requests finished by reason (stop, length, abort)",
            ["reason"],
            registry=registry,
        )
        for reason in ("stop", "length", "abort"):  # exported from the start, at 0
            self.finished.labels(reason=reason)
        self.prompt_tokens = Counter("trtllm_prompt_tokens", "Prompt tokens of accepted requests", registry=registry)
        self.generation_tokens = Counter("trtllm_generation_tokens", "Tokens generated", registry=registry)
        self.waiting = Gauge("trtllm_num_requests_waiting", "Requests queued, not yet running", registry=registry)
        self.running = Gauge("trtllm_num_requests_running", "Requests in the running batch", registry=registry)
        self.blocks_used = Gauge("trtllm_kv_cache_blocks_used", "KV cache blocks in use", registry=registry)
        self.blocks_total = Gauge("trtllm_kv_cache_blocks_total", "KV cache blocks in all", registry=registry)
        self.ttft = Histogram(
            "trtllm_time_to_first_token_seconds",
            "Time from accepting a request to its first token",
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tpot = Histogram(
            "trtllm_time_per_output_token_seconds",
            "Mean time between a request's later tokens",
            buckets=_TPOT_BUCKETS,
            registry=registry,
        )
        self.info = Gauge("trtllm_model_info", "The served model", ["model"], registry=registry)
        self.info.labels(**labels).set(1)

    def on_step(self, stats: EngineStats) -> None:
        """Called by the engine thread after every step."""
        self.waiting.set(stats.num_waiting)
        self.running.set(stats.num_running)
        self.blocks_used.set(stats.num_used_blocks)
        self.blocks_total.set(stats.num_blocks)

    def observe_request(self, ttft: float | None, decode_seconds: float, num_tokens: int, reason: str | None) -> None:
        """Record a finished (or abandoned) request's latency and token count."""
        if ttft is not None:
            self.ttft.observe(ttft)
        if num_tokens > 1:
            self.tpot.observe(decode_seconds / (num_tokens - 1))
        self.generation_tokens.inc(num_tokens)
        self.finished.labels(reason=reason or "abort").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
