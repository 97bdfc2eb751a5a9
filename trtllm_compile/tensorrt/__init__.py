"""The TensorRT target: fused FX graphs -> TensorRT prefill/decode engines (build, cache, refit) and their runtime.

`build(model)` needs `tensorrt` or `tensorrt_rtx` (`pip install "trtllm-compile[tensorrt]"`); building works on a
machine without a GPU. Running engines needs a GPU the flavour supports: see `runtime_unavailable_reason()`.
"""

from trtllm_compile.tensorrt.build import BuildResult, BuildSettings, EngineInfo, build, load
from trtllm_compile.tensorrt.network import UnsupportedOperatorError
from trtllm_compile.tensorrt.refit import refit
from trtllm_compile.tensorrt.runtime import (
    TensorRTEngine,
    TensorRTGenerator,
    TensorRTRuntimeUnavailableError,
    runtime_unavailable_reason,
    select_target,
)
from trtllm_compile.tensorrt.trt import FLAVOUR, TensorRTUnavailableError

__all__ = [
    "FLAVOUR",
    "BuildResult",
    "BuildSettings",
    "EngineInfo",
    "TensorRTEngine",
    "TensorRTGenerator",
    "TensorRTRuntimeUnavailableError",
    "TensorRTUnavailableError",
    "UnsupportedOperatorError",
    "build",
    "load",
    "refit",
    "runtime_unavailable_reason",
    "select_target",
]
