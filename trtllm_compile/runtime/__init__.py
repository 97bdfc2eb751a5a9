"""Generation runtime: paged KV cache blocks, sampler and in-flight batching scheduler."""
