"""Run under torchrun (or any launcher that sets RANK / WORLD_SIZE / MASTER_*): every rank builds the same tiny
model; `LLM(..., tensor_parallel_size=2)` makes rank 0 the driver and the others serve; rank 0 prints the greedy
tokens as JSON.

    torchrun --nproc-per-node 2 tests/parallel/torchrun_generate.py qwen2 '[[5, 17, 200], [250, 1]]' 8
"""

import json
import sys

from support import TINY_MODELS

from trtllm_compile import LLM
from trtllm_compile.runtime.sampling import SamplingParams

if __name__ == "__main__":
    name, prompts, max_tokens = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    model = TINY_MODELS[name].build()  # seeded: the same weights on every rank
    model.generation_config.eos_token_id = None
    with LLM(model, tensor_parallel_size=2, device="cpu", max_batch_size=4, max_num_tokens=64) as llm:
        outputs = llm.generate(prompts, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    print(json.dumps([o.token_ids for o in outputs]))
