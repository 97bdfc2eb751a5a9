"""The one `trt` alias and every difference between the TensorRT flavours, in one place.

`trt` is the full `tensorrt` package where it is installed, else TensorRT for RTX (`tensorrt_rtx`): both expose the
same network/builder API. What differs:
- RTX builds strongly typed networks only (types follow the graph; no precision flags), which is also what we
  want from the full package, so networks are always created strongly typed;
- RTX compiles for explicit compute-capability targets (its CURRENT needs a GPU), so CPU builds name one, e.g.
  SM89; the full package builds for the GPU it runs on;
- RTX engines do not run on Hopper (compute capability 9.0), see `runtime.runtime_unavailable_reason`.
"""

from __future__ import annotations

import importlib
import logging

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "trtllm-compile[tensorrt]"'
DEFAULT_SM = "89"


def _import_trt():
    for name in ("tensorrt", "tensorrt_rtx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Builder"):  # the `tensorrt` PyPI stub imports but has no builder
            return module, name
    return None, None


trt, FLAVOUR = _import_trt()
IS_RTX = FLAVOUR == "tensorrt_rtx"


class TensorRTUnavailableError(ImportError):
    """Neither `tensorrt` nor `tensorrt_rtx` can be imported."""


def require_trt():
    """The `trt` module, or a clear error naming the fix."""
    if trt is None:
        raise TensorRTUnavailableError(
            "the TensorRT target needs TensorRT: neither `tensorrt` nor `tensorrt_rtx` is importable; "
            f"run `{INSTALL_HINT}`"
        )
    return trt


_LOGGER = None


def trt_logger():
    """One TensorRT logger for the process (TensorRT keeps the first it sees), forwarding to `logging`."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = _make_logger(require_trt())
    return _LOGGER


def _make_logger(trt):
    severity = trt.ILogger.Severity
    levels = {
        severity.INTERNAL_ERROR: logging.ERROR,
        severity.ERROR: logging.ERROR,
        severity.WARNING: logging.WARNING,
        severity.INFO: logging.DEBUG,
        severity.VERBOSE: logging.DEBUG,
    }
    trt_log = logging.getLogger("trtllm_compile.tensorrt.builder")

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, level, message):
            # Without a GPU every build logs a CUDA "driver insufficient" error that changes nothing: keep it quiet.
            quiet = "cudaError 35" in message or "CUDA driver version is insufficient" in message
            trt_log.log(logging.DEBUG if quiet else levels.get(level, logging.INFO), "%s", message)

    return _Logger()


def version() -> str:
    """ "<flavour> <version>", part of every engine-cache key: engines do not carry across versions."""
    return f"{FLAVOUR} {require_trt().__version__}"


def supported_sms() -> list[str]:
    """Compute-capability targets the flavour can compile for, as "89"-style strings (empty: the local GPU)."""
    if not IS_RTX:
        return []
    return [name.removeprefix("SM") for name in require_trt().ComputeCapability.__members__ if name.startswith("SM")]


def network_flags() -> int:
    flags = require_trt().NetworkDefinitionCreationFlag
    return 1 << int(flags.STRONGLY_TYPED) if hasattr(flags, "STRONGLY_TYPED") else 0


def set_compute_target(config, sm: str | None) -> None:
    """Compile for compute capability `sm` ("89"); RTX needs an explicit one on a machine without a GPU."""
    if not IS_RTX:
        if sm not in (None, ""):
            logger.info("full TensorRT builds for the local GPU; target SM%s is ignored", sm)
        return
    sm = sm or DEFAULT_SM
    capability = getattr(trt.ComputeCapability, f"SM{sm}", None)
    if capability is None:
        raise ValueError(f"{FLAVOUR} cannot target SM{sm}; choose one of {supported_sms()} (e.g. --sm {DEFAULT_SM})")
    config.num_compute_capabilities = 1
    config.set_compute_capability(capability, 0)


def add_attention(network, q, k, v, causal: bool):
    """The native attention layer: `add_attention_v2` (causal kind) where present, else the first version."""
    trt = require_trt()
    softmax = trt.AttentionNormalizationOp.SOFTMAX
    if hasattr(network, "add_attention_v2"):
        kind = trt.CausalMaskKind.UPPER_LEFT if causal else trt.CausalMaskKind.NONE
        return network.add_attention_v2(q, k, v, softmax, kind)
    return network.add_attention(q, k, v, softmax, causal)


def has_timing_cache() -> bool:
    """RTX compiles kernels at run time: its timing-cache calls are deprecated no-ops."""
    return trt is not None and not IS_RTX and hasattr(trt.IBuilderConfig, "create_timing_cache")


def runtime_blocked_sms() -> set[tuple[int, int]]:
    """GPU compute capabilities the flavour refuses to run engines on."""
    return {(9, 0)} if IS_RTX else set()
