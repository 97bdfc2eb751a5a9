import torch
from network_support import builds, convert_fn, convert_module, layer_types, output_shapes

from trtllm_compile.capture import trace_aten
from trtllm_compile.tensorrt.converters import find_converter


def test_embedding_is_a_gather_of_the_frozen_table():
    table = torch.nn.Embedding(100, 16).half()
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=1, max=16)
    converted = convert_module(table, (torch.randint(0, 100, (2, 5)),), ({0: batch, 1: seq},))
    assert layer_types(converted) == {"CONSTANT": 1, "GATHER": 1}
    assert output_shapes(converted) == [(-1, -1, 16)]
    assert builds(converted, max_size=16)


def test_indexing_with_one_tensor_gathers():
    converted = convert_fn(lambda t, i: t[i], torch.randn(10, 4), torch.tensor([[1, 2, 3]]))
    assert output_shapes(converted) == [(1, 3, 4)]
    assert builds(converted)


def test_indexing_with_two_tensors_is_refused():
    gm = trace_aten(lambda t, i, j: t[i, j], (torch.randn(10, 4), torch.tensor([1, 2]), torch.tensor([0, 3])))
    node = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.index.Tensor)
    spec, reason = find_converter(node)
    assert spec is None and "one index tensor" in reason
