"""Tensor-parallel TensorRT engines: one prefill/decode pair per rank, all built in this process.

Rank r's engines are `build(model, tensor_parallel=TensorParallelConfig(r, world_size))`: the SHARD pass keeps the
rank's heads, MLP columns and vocabulary rows, and its collectives become distributed-collective layers
(`converters/collectives.py`). Building needs no process group and no GPU: the group is the literal
`group_name`, and the collectives' ranks come from the config. Each rank is its own engine-cache entry (the
config is part of the build settings, so of the key).

Running them needs one GPU per rank and an NCCL communicator set on each rank's execution context; the engine
runtime (`tensorrt/runtime.py`) does not do that yet.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trtllm_compile.parallel.config import TensorParallelConfig
from trtllm_compile.tensorrt.build import BuildResult, build

logger = logging.getLogger(__name__)


def build_rank_engines(
    model: torch.nn.Module, world_size: int, *, group_name: str = "0", out_dir=None, **build_kwargs
) -> list[BuildResult]:
    """Every rank's engines, rank order; `build_kwargs` are `build()`'s (sizes, dtype, target_sm, cache_dir...).

    Each rank exports the model again (its passes rewrite the graph in place); `out_dir` gets one `rank<r>`
    folder per rank.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be positive, got {world_size}")
    if "tensor_parallel" in build_kwargs:
        raise TypeError("build_rank_engines sets tensor_parallel per rank; pass world_size and group_name instead")
    results = []
    for rank in range(world_size):
        tp = TensorParallelConfig(rank, world_size, group_name)
        rank_out = Path(out_dir) / f"rank{rank}" if out_dir is not None else None
        results.append(build(model, tensor_parallel=tp, out_dir=rank_out, **build_kwargs))
        logger.info("tensor-parallel rank %d of %d: engines in %s", rank, world_size, results[-1].directory)
    return results
