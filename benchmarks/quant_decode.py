"""Batch-1 decode GEMMs of a Llama-2-7B layer: bf16 against the trtllm quantized ops, side by side.

    PYTHONPATH=. python benchmarks/quant_decode.py [--rows 1 16 64] [--layers 4]

One decoder layer runs four GEMMs against a [rows, K] activation: fused Q/K/V 4096 -> 12288, o_proj 4096 -> 4096,
fused gate/up 4096 -> 22016, down_proj 11008 -> 4096 (random weights; the timing does not depend on values).
"us/layer" is the median GPU time of those four GEMMs, replayed from a CUDA graph over `--layers` distinct
layers so weights stream from HBM (not L2) and Python launch cost is excluded. "TB/s" counts the weight bytes
each layer must read once, as stored (INT4: the packed codes, half a byte a weight, with their scales and zero
points); "x bf16" is the speedup over `x @ w.t()` in bf16; "decode tok/s" is what 32 such layers alone would
allow at batch 1 (the GEMM ceiling of a whole decode step).

Formats: bf16; fp8 (E4M3 weights, per-channel scales, static per-tensor or dynamic per-token activations,
torch._scaled_mm); int8 (SmoothQuant W8A8, per-token activations, torch._int_mm); int4 (AWQ weight-only, group
128 with zero points): `trtllm::int4_linear`, the Triton kernels of kernels/int4_gemv.py tuned per shape on
the first call (the plans they chose are printed under each table), and tinygemm's `_weight_int4pack_mm`
(`ops.quant.int4_linear_tinygemm`, torch's INT4 kernel) for comparison.
"""

from __future__ import annotations

import argparse

import torch

from trtllm_compile.bench.measure import cuda_graph_us
from trtllm_compile.bench.shapes import layer_gemms
from trtllm_compile.ops import quant
from trtllm_compile.quantization import QuantConfig
from trtllm_compile.quantization.formats import quantize_weight

SHAPES = {name: (k, n) for name, (n, k) in layer_gemms("llama-2-7b").items()}  # name -> (K, N)
DECODE_LAYERS = 32  # Llama-2-7B
FORMATS = {
    "bf16": None,
    "fp8 static": QuantConfig.from_name("fp8"),
    "fp8 dynamic": QuantConfig.from_name("fp8", activations="dynamic"),
    "int8 dynamic": QuantConfig.from_name("int8_sq"),
    "int4 g128": QuantConfig.from_name("int4_awq"),
    "int4 tinygemm": QuantConfig.from_name("int4_awq"),
}
INT4_GEMMS = {"int4 g128": torch.ops.trtllm.int4_linear, "int4 tinygemm": quant.int4_linear_tinygemm}


def _layer(label: str, config: QuantConfig | None, generator: torch.Generator) -> dict:
    """One layer's weights in a format: {gemm name: (callable(x) -> y, bytes read)}."""
    gemms = {}
    for name, (k, n) in SHAPES.items():
        w = (torch.randn(n, k, generator=generator) * 0.02).to("cuda", torch.bfloat16)
        if config is None:
            gemms[name] = (lambda x, w=w: x @ w.t(), w.numel() * 2)
            continue
        q = quantize_weight(config, w, input_amax=4.0)
        tensors = [q.weight, q.weight_scale, q.zeros, q.input_scale]
        weight, scale, zeros, input_scale = [t.cuda() if t is not None else None for t in tensors]
        nbytes = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        if q.op == "int4_linear":
            args = (weight, scale, zeros, q.group_size)
            gemms[name] = (lambda x, a=args, gemm=INT4_GEMMS[label]: gemm(x, *a, None), nbytes)
        else:
            op = getattr(torch.ops.trtllm, q.op)
            gemms[name] = (lambda x, op=op, a=(weight, scale, input_scale): op(x, *a, None), nbytes)
    return gemms


def time_layers(layers: list[dict], rows: int, repeats: int = 20) -> float:
    """Median microseconds of one layer's four GEMMs, from a CUDA graph over every layer."""
    inputs = {k: torch.randn(rows, k, device="cuda", dtype=torch.bfloat16) for k in {k for k, _ in SHAPES.values()}}

    def step():
        for layer in layers:
            for name, (k, _) in SHAPES.items():
                layer[name][0](inputs[k])

    # cuda_graph_us runs step once eagerly, uncaptured: the INT4 kernels tune their plans, int4 weights convert for
    # tinygemm and cuBLASLt warms up.
    return cuda_graph_us(step, len(layers), repeats)


def _int4_plans(rows: int) -> list[str]:
    """The plans the INT4 kernels' tuner chose for each GEMM at this row count (kernels/int4_gemv.py)."""
    from trtllm_compile.kernels import gemv, tuning

    names = {(n, k): name for name, (k, n) in SHAPES.items()}
    chosen = [(key, plan) for key, plan in tuning.plans.items() if "int4" in key and key[0] == gemv.row_bucket(rows)]
    return [f"  {names.get(key[1:3], key[1:3])}: {plan}" for key, plan in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1], help="activation rows M (batch at decode)")
    parser.add_argument("--layers", type=int, default=4, help="distinct layers replayed (beats L2 reuse)")
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; Llama-2-7B layer GEMMs {SHAPES}")
    for rows in args.rows:
        print(f"\nrows (batch) = {rows}")
        print(f"{'format':<14}{'us/layer':>10}{'TB/s':>7}{'x bf16':>8}{'decode tok/s':>14}")
        baseline = None
        for label, config in FORMATS.items():
            generator = torch.Generator().manual_seed(0)
            try:
                layers = [_layer(label, config, generator) for _ in range(args.layers)]
                us = time_layers(layers, rows)
            except (RuntimeError, ValueError) as error:  # a GPU or torch build without the kernel: say so
                print(f"{label:<14}  unavailable: {str(error).splitlines()[0]}")
                continue
            nbytes = sum(b for _, b in layers[0].values())
            baseline = baseline or us
            tok_s = 1e6 / (us * DECODE_LAYERS)
            print(f"{label:<14}{us:>10.1f}{nbytes / us / 1e6:>7.2f}{baseline / us:>8.2f}{tok_s:>14.0f}")
            del layers
            torch.cuda.empty_cache()
        print("int4 g128 plans (kernels/int4_gemv.py):", *_int4_plans(rows), sep="\n")


if __name__ == "__main__":
    main()
