"""QuantConfig: which format, with which options, and (once calibrated) the calibration it is built from."""

from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trtllm_compile.quantization.calibration import Calibration

FORMATS = {
    "fp8": "FP8 E4M3 weights and activations (W8A8)",
    "int8_sq": "INT8 SmoothQuant weights and activations (W8A8)",
    "int4_awq": "INT4 weight-only, activation-aware scales (AWQ)",
    "int4_gptq": "INT4 weight-only, rounding errors compensated on calibration inputs (GPTQ)",
    "int4_rtn": "INT4 weight-only, round to nearest",
}
KV_CACHE_FORMATS = ("fp8",)
ROUNDINGS = ("nearest", "gptq")
_FIXED_ROUNDING = {"int4_rtn": "nearest", "int4_gptq": "gptq"}  # the formats whose name says how they round
_DEFAULT_ACTIVATIONS = {"fp8": "static", "int8_sq": "dynamic"}


@dataclass(frozen=True)
class QuantConfig:
    """How to quantize a model. Build one by name: `QuantConfig.from_name("int4_awq", group_size=64)`.

    format: one of FORMATS, or None to quantize only the KV cache.
    kv_cache: "fp8" stores K and V in FP8 E4M3 with one calibrated scale each per layer; None leaves them as is.
    weight_scales: "channel" (one scale per output channel) or "tensor" (one per weight); FP8 only, INT8 is
        always per channel and INT4 per group.
    activations: "static" (one calibrated scale per tensor) or "dynamic" (one scale per token, computed at run
        time); W8A8 formats only. Defaults: static for fp8, dynamic for int8_sq.
    alpha: SmoothQuant migration strength; 0 keeps the activations as they are, 1 moves all their range into
        the weights.
    group_size: INT4 inputs per scale. zero_point: INT4 asymmetric (scale and zero point per group) or
        symmetric (scale only, zero point 8).
    awq_grid: AWQ tries alpha in {0, 1/grid, ..., (grid-1)/grid} for each group of linears.
    awq_clip: also run AWQ's clipping search (per row and group, how far to shrink the range). Off by default:
        on SmolLM2-135M it raised the wiki perplexity increase from +22.6% to +25.8% (4 windows).
    rounding: "nearest" or "gptq" (GPTQ: each weight column's rounding error is compensated on the columns not
        rounded yet, on the calibration inputs' Gram matrix). Defaults to "nearest"; int4_gptq is INT4 with
        "gptq", int4_rtn with "nearest".
    gptq_sink_weight: how many times the first position's tokens count in the Gram matrix of the K/V
        projections' input. Every later query reads the first position's K and V (the attention sink), so a
        K/V error there weighs on all of them; counted once, GPTQ trades it for the others' errors. On
        SmolLM2-135M INT4 it took GPTQ from +29.8% to +15.9% (16 windows).
    exclude: fnmatch patterns of nn.Linear names kept in full precision (the LM head by default: it is the most
        sensitive GEMM). Embeddings are gathers, not GEMMs, and always stay unquantized.
    calib_window / calib_windows / calib_samples: calibration windows of tokens, how many, and how many tokens
        per linear input to keep for the AWQ search.
    calibration: the statistics a quantization pass reads (set by `calibrate`, see `with_calibration`).
    """

    format: str | None = "fp8"
    kv_cache: str | None = None
    weight_scales: str = "channel"
    activations: str | None = None
    alpha: float = 0.5
    group_size: int = 128
    zero_point: bool = True
    awq_grid: int = 20
    awq_clip: bool = False
    rounding: str | None = None
    gptq_sink_weight: float = 64.0
    exclude: tuple[str, ...] = ("lm_head",)
    calib_window: int = 512
    calib_windows: int = 32
    calib_samples: int = 1024
    calibration: Calibration | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"unknown quantization format {self.format!r}; choose one of {sorted(FORMATS)}")
        if self.kv_cache is not None and self.kv_cache not in KV_CACHE_FORMATS:
            raise ValueError(f"unknown kv_cache format {self.kv_cache!r}; choose one of {KV_CACHE_FORMATS} or None")
        if self.format is None and self.kv_cache is None:
            raise ValueError("nothing to quantize: give a format, kv_cache='fp8', or both")
        if self.weight_scales not in ("channel", "tensor"):
            raise ValueError(f"weight_scales must be 'channel' or 'tensor', not {self.weight_scales!r}")
        activations = self.activations or _DEFAULT_ACTIVATIONS.get(self.format)
        if self.format in _DEFAULT_ACTIVATIONS and activations not in ("static", "dynamic"):
            raise ValueError(f"activations must be 'static' or 'dynamic', not {self.activations!r}")
        object.__setattr__(self, "activations", activations)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        rounding = self.rounding or _FIXED_ROUNDING.get(self.format, "nearest")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, not {self.rounding!r}")
        if rounding != _FIXED_ROUNDING.get(self.format, rounding):
            other = next(f for f, r in _FIXED_ROUNDING.items() if r == rounding)
            raise ValueError(f"{self.format} rounds by {_FIXED_ROUNDING[self.format]}: use format {other!r}")
        object.__setattr__(self, "rounding", rounding)
        if self.gptq_sink_weight < 1:
            raise ValueError(f"gptq_sink_weight must be >= 1, not {self.gptq_sink_weight}")
        if self.group_size <= 0 or self.group_size % 2:
            raise ValueError(f"group_size must be a positive even number, not {self.group_size}")

    @classmethod
    def from_name(cls, name: str | QuantConfig | None, **options: Any) -> QuantConfig:
        """A config from a format name (or None with kv_cache=...) and options; a QuantConfig is updated."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown quantization option(s) {unknown}; valid options are {sorted(known)}")
        if isinstance(name, QuantConfig):
            return dataclasses.replace(name, **options)
        return cls(format=name, **options)

    @property
    def is_int4(self) -> bool:
        return self.format in ("int4_awq", "int4_gptq", "int4_rtn")

    @property
    def needs_samples(self) -> bool:
        """Whether calibration must keep token samples of each linear input (AWQ's search set)."""
        return self.format == "int4_awq"

    @property
    def needs_grams(self) -> bool:
        """Whether calibration must sum each linear input's Gram matrix (GPTQ's H) for the graph pass;
        `quantize` sums them itself, one layer at a time, when its calibration has none."""
        return self.format is not None and self.rounding == "gptq"

    def quantizes(self, linear_name: str) -> bool:
        return self.format is not None and not any(fnmatch.fnmatchcase(linear_name, p) for p in self.exclude)

    def with_calibration(self, calibration: Calibration) -> QuantConfig:
        return dataclasses.replace(self, calibration=calibration)

    def to_json(self) -> dict:
        """The options (not the calibration) as JSON-able values."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "calibration"}
        out["exclude"] = list(self.exclude)
        return out

    @classmethod
    def from_json(cls, data: dict) -> QuantConfig:
        known = {f.name for f in dataclasses.fields(cls)} - {"calibration"}
        return cls(**{k: (tuple(v) if k == "exclude" else v) for k, v in data.items() if k in known})
