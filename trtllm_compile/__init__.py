"""trtllm_compile: a torch.compile backend that fuses Hugging Face LLMs for TensorRT and CUDA."""

from trtllm_compile.api import compile, explain
from trtllm_compile.backend import last_report, trtllm_backend
from trtllm_compile.config import CompileConfig
from trtllm_compile.models import load_default_model, load_model
from trtllm_compile.parallel import TensorParallelConfig
from trtllm_compile.quantization import (
    QuantConfig,
    calibrate,
    evaluate_perplexity,
    load_quantized,
    quantize,
    save_quantized,
)
from trtllm_compile.report import CompileReport
from trtllm_compile.runtime.llm import LLM
from trtllm_compile.runtime.sampling import SamplingParams

__all__ = [
    "LLM",
    "SamplingParams",
    "CompileConfig",
    "CompileReport",
    "QuantConfig",
    "TensorParallelConfig",
    "calibrate",
    "compile",
    "evaluate_perplexity",
    "explain",
    "last_report",
    "load_default_model",
    "load_model",
    "load_quantized",
    "quantize",
    "save_quantized",
    "trtllm_backend",
]
