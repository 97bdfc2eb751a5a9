import torch
from support import TINY_MODELS

import trtllm_compile


def test_explain_reports_matches_per_family_and_a_readable_table():
    spec = TINY_MODELS["gemma3"]
    report = trtllm_compile.explain(spec.build(), torch.randint(0, 256, (1, 6)))
    assert report.matches == spec.expected_matches()
    assert report.fallbacks == []
    text = str(report)
    assert "attention 2, rope 4, mlp 2, norm 13" in text
    assert "fallbacks: none" in text


def test_explain_takes_keyword_inputs():
    spec = TINY_MODELS["qwen2"]
    ids = torch.randint(0, 256, (2, 4))
    report = trtllm_compile.explain(spec.build(), input_ids=ids, attention_mask=torch.ones_like(ids))
    assert report.matches == spec.expected_matches()
