import importlib.util

import pytest

from trtllm_compile.tensorrt.torch_tensorrt_bridge import FUSED_OPS, register_with_torch_tensorrt


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None, reason="torch_tensorrt imports here")
def test_bridge_is_a_no_op_without_torch_tensorrt():
    assert register_with_torch_tensorrt() == 0


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is None, reason="torch_tensorrt is not installed")
def test_bridge_registers_the_fused_op_converters():
    import torch
    from torch_tensorrt.dynamo.conversion._ConverterRegistry import DYNAMO_CONVERTERS

    assert register_with_torch_tensorrt() == len(FUSED_OPS)
    assert all(getattr(torch.ops.trtllm, name).default in DYNAMO_CONVERTERS for name in FUSED_OPS)
