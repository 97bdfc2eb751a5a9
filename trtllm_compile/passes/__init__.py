"""The FX pass pipeline. Importing this package registers every pass, in stage order:

canonicalize -> match -> fuse -> (quantize -> shard -> cache -> lower, added by the targets that need them).
"""

from trtllm_compile.passes import (  # noqa: F401  (import order is run order within a stage)
    canonicalize_gelu,
    canonicalize_linear,
    fuse_add_norm,
    fuse_gemms,
    match_attention,
    match_mlp,
    match_norm,
    match_rope,
    remove_noops,
)
from trtllm_compile.passes.registry import PassResult, Stage, register_pass, registered_passes, run_passes

__all__ = ["PassResult", "Stage", "register_pass", "registered_passes", "run_passes"]
