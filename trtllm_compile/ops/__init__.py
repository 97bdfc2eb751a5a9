"""Fused custom ops of the `trtllm` namespace.

Each op is a `torch.library.custom_op` whose body is the plain PyTorch reference (what runs on CPU and what
every kernel is tested against) with a fake kernel for tracing. The `cuda` target registers GPU kernels for the
same ops (`trtllm_compile.kernels`), so a fused graph runs unchanged on either device.
"""

from trtllm_compile.ops import attention, linear, mlp, norm, paged_attention, quant, rope  # noqa: F401  (registers ops)
from trtllm_compile.ops.families import FAMILY_OF_OP, family_of

__all__ = ["FAMILY_OF_OP", "family_of"]
