from trtllm_compile.passes import Stage, registered_passes


def test_pipeline_runs_cleanup_first_then_matchers_then_fusions_quantize_shard_then_cache():
    assert [(spec.stage, spec.name) for spec in registered_passes()] == [
        (Stage.CANONICALIZE, "remove_noops"),
        (Stage.CANONICALIZE, "canonicalize_gelu"),
        (Stage.CANONICALIZE, "canonicalize_linear"),
        (Stage.MATCH, "match_rms_norm"),
        (Stage.MATCH, "match_layer_norm"),
        (Stage.MATCH, "match_rope"),
        (Stage.MATCH, "match_attention"),
        (Stage.MATCH, "match_mlp"),
        (Stage.FUSE, "fuse_gemms"),
        (Stage.FUSE, "fuse_add_rms_norm"),
        (Stage.QUANTIZE, "quantize_linear"),
        (Stage.QUANTIZE, "quantize_kv_cache"),
        (Stage.SHARD, "shard_tensor_parallel"),
        (Stage.CACHE, "insert_paged_attention"),
        (Stage.CACHE, "fold_rope_into_paged_attention"),
        (Stage.CACHE, "tabulate_position_features"),
        (Stage.CACHE, "select_logits"),
        (Stage.CACHE, "insert_kv_cache_tensorrt"),
        (Stage.LOWER, "lower_linear"),
        (Stage.LOWER, "fuse_int4_gated_mlp"),
        (Stage.LOWER, "split_row_parallel_sums"),
        (Stage.LOWER, "widen_partial_sums"),
    ]
