"""Tensor parallelism over torch.distributed: the rank's config and split arithmetic, the SHARD pass's rewrites
(`passes/shard_tensor_parallel.py`), one runner per rank and the launcher (`launch`, `engine`: import those
explicitly; they pull in the runtime)."""

from trtllm_compile.parallel.config import TensorParallelConfig, shard_heads, shard_vocab

__all__ = ["TensorParallelConfig", "shard_heads", "shard_vocab"]
