"""Compile options, shared by the torch.compile backend and `trtllm_compile.compile`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trtllm_compile.parallel.config import TensorParallelConfig
    from trtllm_compile.quantization.config import QuantConfig


@dataclass(frozen=True)
class CompileConfig:
    """Options of one compile.

    disable_passes: names of registered passes to skip (see `trtllm_compile.passes.registered_passes()`).
    sliding_windows: per attention layer in graph order, its sliding window (-1: full attention). Graph passes
        cannot see it (Hugging Face folds it into the mask), so the runtime reads it from the model config.
    quantization: a calibrated `QuantConfig` for the QUANTIZE passes (see `trtllm_compile.quantization`).
    tensor_parallel: this rank's `TensorParallelConfig` for the SHARD pass (set by the tensor-parallel runtime).
    tp_invariant: 2 makes the runtime's outputs bit-identical at tensor_parallel_size 1 and 2 (0: off): one GPU
        sums its row-parallel GEMMs as two ranks do (passes/split_row_parallel_sums.py) and every kernel runs a
        plan fixed by the row count (`kernels.fixed_plans`). Slower: for reproducibility checks, not serving.
    max_positions: positions the runtime's step graph can meet (0: unknown); the runtime sets it, and values of
        the positions alone are then tabulated (passes/tabulate_position_features.py).
    """

    disable_passes: frozenset[str] = field(default_factory=frozenset)
    sliding_windows: tuple[int, ...] = ()
    quantization: QuantConfig | None = None
    tensor_parallel: TensorParallelConfig | None = None
    tp_invariant: int = 0
    max_positions: int = 0

    @classmethod
    def from_options(cls, options: dict | None) -> CompileConfig:
        options = dict(options or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown trtllm compile option(s) {unknown}; valid options are {sorted(known)}")
        if "disable_passes" in options:
            options["disable_passes"] = frozenset(options["disable_passes"])
        return cls(**options)
