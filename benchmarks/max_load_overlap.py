"""Can a max-load decode step overlap its memory-bound attention with its compute-bound GEMMs?

    PYTHONPATH=. python benchmarks/max_load_overlap.py [--sequences 384] [--context 192] [--split 192]

At max load a Llama-2-7B decode step is the paged decode attention (reading every sequence's K/V) and the
GEMMs (compute-bound at a few hundred rows), one after the other. NanoFlow-style nano-batching splits the
batch in two and runs one half's attention beside the other half's GEMMs. This times, on random weights and a
full KV cache, 32 layers of:

- each GEMM alone (cuBLAS and cuBLASLt: `torch.backends.cuda.preferred_blas_library`),
- the attention alone and the GEMMs alone, for the whole batch and for its two halves,
- both, one after the other, for the whole batch (what `bench` runs) and for the halves,
- the halves pipelined on two streams (each layer: A's attention beside B's GEMMs, then B's attention beside
  A's GEMMs), with default priorities, attention first, GEMMs first,
- the same with the GEMMs launched first on SMs they leave free (`torch._C._set_sm_carveout_experimental`, which
  torch 2.11 passes to cuBLASLt only: use `--blas cublaslt`; "GEMMs alone, N SMs left out" shows whether it took),
  so the attention starts beside them instead of after them (a fixed-grid attention kernel holding only the
  SMs left out lost: docs/benchmarks.md run 100, commit aae0ea0),
- the halves as two independent 32-layer chains, one a stream, with nothing keeping them out of phase,
- the same with each stream in a green context of its own SMs (where torch has them), and the attention alone
  in such a context (how few SMs still read K/V at the card's rate).

Each is one CUDA graph (the streams' fork and join captured in it), timed by replay; the median of 10.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trtllm_compile.bench.measure import cuda_graph_us, launch_ms
from trtllm_compile.kernels import paged_attention

HIDDEN, HEADS, HEAD_DIM, INTERMEDIATE, LAYERS, PAGE = 4096, 32, 128, 11008, 32, 16


class DecodeLayer:
    """One Llama-2-7B layer's decode work on rows `part` of the batch: attention, or the GEMMs from the output
    projection to the next layer's QKV. Every layer shares these weights and this cache: each is far larger
    than L2, so sharing them changes no read."""

    def __init__(self, sequences: int, context: int, split: int):
        device, bf16 = torch.device("cuda"), dict(dtype=torch.bfloat16, device="cuda")
        blocks = -(-context // PAGE)
        self.k_cache = torch.randn(sequences * blocks, PAGE, HEADS, HEAD_DIM, **bf16)
        self.v_cache = torch.randn_like(self.k_cache)
        self.tables = torch.arange(sequences * blocks, dtype=torch.int32, device=device).view(sequences, blocks)
        self.lens = torch.full((sequences,), context, dtype=torch.int32, device=device)
        self.q = torch.randn(sequences, HEADS, HEAD_DIM, **bf16)
        self.attn_out = torch.empty_like(self.q)
        self.x = torch.randn(sequences, HIDDEN, **bf16)
        self.weights = {
            "qkv": torch.randn(3 * HIDDEN, HIDDEN, **bf16) * 0.02,
            "o": torch.randn(HIDDEN, HIDDEN, **bf16) * 0.02,
            "gate_up": torch.randn(2 * INTERMEDIATE, HIDDEN, **bf16) * 0.02,
            "down": torch.randn(HIDDEN, INTERMEDIATE, **bf16) * 0.02,
        }
        self.parts = {"all": slice(0, sequences), "A": slice(0, split), "B": slice(split, sequences)}

    def attention(self, part: str) -> None:
        rows = self.parts[part]
        paged_attention.paged_decode_attention(
            self.q[rows], self.k_cache, self.v_cache, self.tables[rows], self.lens[rows], HEAD_DIM**-0.5,
            out=self.attn_out[rows],
        )  # fmt: skip

    def gemms(self, part: str) -> torch.Tensor:
        rows, w = self.parts[part], self.weights
        h = self.x[rows] + self.attn_out[rows].view(-1, HIDDEN) @ w["o"].t()
        gate_up = h @ w["gate_up"].t()
        h = h + (F.silu(gate_up[:, :INTERMEDIATE]) * gate_up[:, INTERMEDIATE:]) @ w["down"].t()
        return h @ w["qkv"].t()


def graph_ms(build: Callable[[], None], reps: int = 10) -> float:
    """Median ms of one replay of `build`'s work captured as a CUDA graph (run once first: tuning, allocation)."""
    return cuda_graph_us(build, calls=1, replays=reps) / 1e3


def pipelined(layer: DecodeLayer, attention_stream: torch.cuda.Stream, gemm_stream: torch.cuda.Stream):
    """The two halves offset by half a layer: A's attention beside B's GEMMs, then B's beside A's."""

    def build() -> None:
        main = torch.cuda.current_stream()
        attention_stream.wait_stream(main)
        gemm_stream.wait_stream(main)
        qkv_a, qkv_b, attended_a, attended_b = (torch.cuda.Event() for _ in range(4))
        with torch.cuda.stream(gemm_stream):
            layer.gemms("A")  # A's first QKV
            qkv_a.record()
        for index in range(LAYERS):
            with torch.cuda.stream(attention_stream):
                attention_stream.wait_event(qkv_a)
                layer.attention("A")
                attended_a.record()
            with torch.cuda.stream(gemm_stream):
                if index:
                    gemm_stream.wait_event(attended_b)
                layer.gemms("B")
                qkv_b.record()
            with torch.cuda.stream(attention_stream):
                attention_stream.wait_event(qkv_b)
                layer.attention("B")
                attended_b.record()
            with torch.cuda.stream(gemm_stream):
                gemm_stream.wait_event(attended_a)
                layer.gemms("A")
                qkv_a.record()
        main.wait_stream(attention_stream)
        main.wait_stream(gemm_stream)

    return build


def eager_ms(build: Callable[[], None], reps: int = 10) -> float:
    """Median ms of `build` launched eagerly (no graph: whether a graph's capture changes how streams overlap)."""
    build()  # tuning, allocation
    torch.cuda.synchronize()
    return launch_ms(build, reps)


def carved(carveout: int | None, build: Callable[[], None]) -> Callable[[], None]:
    """`build` with `carveout` SMs left out of every GEMM it issues (captured into the graph as it is)."""

    def with_carveout() -> None:
        torch._C._set_sm_carveout_experimental(carveout)
        try:
            build()
        finally:
            torch._C._set_sm_carveout_experimental(None)

    return with_carveout


def chains(layer: DecodeLayer, stream_a: torch.cuda.Stream, stream_b: torch.cuda.Stream) -> Callable[[], None]:
    """Each half's 32 layers on a stream of its own, with no event between them after the fork."""

    def build() -> None:
        main = torch.cuda.current_stream()
        for stream, part in ((stream_a, "A"), (stream_b, "B")):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                for _ in range(LAYERS):
                    layer.attention(part)
                    layer.gemms(part)
        main.wait_stream(stream_a)
        main.wait_stream(stream_b)

    return build


def on_stream(stream: torch.cuda.Stream, build: Callable[[], None]) -> Callable[[], None]:
    def forked() -> None:
        main = torch.cuda.current_stream()
        stream.wait_stream(main)
        with torch.cuda.stream(stream):
            build()
        main.wait_stream(stream)

    return forked


def repeated(*steps: Callable[[], object]) -> Callable[[], None]:
    def build() -> None:
        for _ in range(LAYERS):
            for step in steps:
                step()

    return build


def gemm_table(layer: DecodeLayer, rows: int) -> None:
    print(f"| GEMM ({rows} rows) | cuBLAS us | TFLOPS | cuBLASLt us | TFLOPS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    x = torch.randn(rows, INTERMEDIATE, dtype=torch.bfloat16, device="cuda")
    for name, weight in layer.weights.items():
        inputs, out = x[:, : weight.shape[1]], torch.empty(rows, weight.shape[0], dtype=x.dtype, device="cuda")
        cells = []
        for library in ("cublas", "cublaslt"):
            torch.backends.cuda.preferred_blas_library(library)
            ms = graph_ms(lambda w=weight, a=inputs, o=out: torch.mm(a, w.t(), out=o), reps=20)
            cells += [f"{1e3 * ms:.1f}", f"{2 * rows * weight.numel() / ms / 1e9:.0f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    torch.backends.cuda.preferred_blas_library("cublas")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=384)
    parser.add_argument("--context", type=int, default=192, help="cached tokens of every sequence")
    parser.add_argument("--split", type=int, default=None, help="rows of half A (default: half the batch)")
    parser.add_argument("--blas", choices=("cublas", "cublaslt"), default="cublas", help="library of the cases' GEMMs")
    parser.add_argument("--eager", action="store_true", help="time the cases launched eagerly, not as graphs")
    parser.add_argument("--carveouts", default="32,48,64", help="SMs the GEMMs leave to the attention, comma list")
    args = parser.parse_args()
    split = args.split or args.sequences // 2
    layer = DecodeLayer(args.sequences, args.context, split)
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}: {args.sequences} sequences of "
          f"{args.context} tokens, halves of {split} and {args.sequences - split} rows, {LAYERS} layers\n")  # fmt: skip
    gemm_table(layer, args.sequences)
    torch.backends.cuda.preferred_blas_library(args.blas)

    high = torch.cuda.Stream(priority=-1)  # lower numbers are higher priorities
    cases = {
        "attention alone": repeated(lambda: layer.attention("all")),
        "GEMMs alone": repeated(lambda: layer.gemms("all")),
        "attention alone, halves": repeated(lambda: layer.attention("A"), lambda: layer.attention("B")),
        "GEMMs alone, halves": repeated(lambda: layer.gemms("A"), lambda: layer.gemms("B")),
        "both, serial (bench's step)": repeated(lambda: layer.attention("all"), lambda: layer.gemms("all")),
        "both, serial, halves": repeated(
            *(lambda p=p, f=f: f(p) for p in "AB" for f in (layer.attention, layer.gemms))
        ),
        "halves on two streams": pipelined(layer, torch.cuda.Stream(), torch.cuda.Stream()),
        "two streams, attention first": pipelined(layer, high, torch.cuda.Stream()),
        "two streams, GEMMs first": pipelined(layer, torch.cuda.Stream(), high),
        "halves as independent chains": chains(layer, torch.cuda.Stream(), torch.cuda.Stream()),
    }
    for carveout in (int(c) for c in args.carveouts.split(",") if c):
        gemms = repeated(lambda: layer.gemms("all"))
        cases[f"GEMMs alone, {carveout} SMs left out"] = carved(carveout, gemms)
        cases[f"two streams, GEMMs first on all but {carveout} SMs"] = carved(
            carveout, pipelined(layer, torch.cuda.Stream(), high)
        )
        cases[f"independent chains, GEMMs on all but {carveout} SMs"] = carved(
            carveout, chains(layer, torch.cuda.Stream(), torch.cuda.Stream())
        )
    from torch.cuda import green_contexts

    if green_contexts.SUPPORTED:
        sms = torch.cuda.get_device_properties(0).multi_processor_count
        contexts = []  # alive while their streams run
        for attention_sms in (32, 48, 64, 80):  # Hopper partitions SMs in groups of 8
            pair = [
                green_contexts.GreenContext.create(num_sms=n) for n in (attention_sms, (sms - attention_sms) // 8 * 8)
            ]
            contexts += pair
            cases[f"green contexts: attention {attention_sms} SMs"] = pipelined(layer, *(c.Stream() for c in pair))
            cases[f"attention alone on {attention_sms} SMs"] = on_stream(
                pair[0].Stream(), repeated(lambda: layer.attention("all"))
            )
    print(f"\n| {LAYERS} layers | ms |")
    print("| --- | ---: |")
    for name, build in cases.items():
        print(f"| {name} | {(eager_ms if args.eager else graph_ms)(build):.3f} |", flush=True)


if __name__ == "__main__":
    main()
