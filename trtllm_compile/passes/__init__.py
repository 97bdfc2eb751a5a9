"""The FX pass pipeline. Importing this package registers every pass, in stage order:

canonicalize -> match -> fuse -> quantize -> shard -> cache -> lower.

Within a stage, passes run in the order they are imported below, so this import list is the pipeline;
`ruff: noqa: I001` keeps the import sorter from reordering it.
"""
# ruff: noqa: I001

from trtllm_compile.passes import (  # noqa: F401
    remove_noops,
    canonicalize_gelu,
    canonicalize_linear,
    match_norm,
    match_rope,
    match_attention,
    match_mlp,
    fuse_gemms,
    fuse_add_norm,
    quantize_linear,
    quantize_kv_cache,
    shard_tensor_parallel,
    insert_paged_attention,
    fold_rope_into_paged_attention,
    tabulate_position_features,
    select_logits,
    insert_kv_cache_tensorrt,
    lower_linear,
    fuse_int4_gated_mlp,
    split_row_parallel_sums,
    widen_partial_sums,
)
from trtllm_compile.passes.registry import (
    GRAPH_STAGES,
    PassResult,
    Stage,
    register_pass,
    registered_passes,
    run_passes,
)

__all__ = ["GRAPH_STAGES", "PassResult", "Stage", "register_pass", "registered_passes", "run_passes"]
