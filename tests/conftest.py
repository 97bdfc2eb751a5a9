import os

import pytest
import torch

# On a machine without CUDA, Triton kernels run through Triton's CPU interpreter (tests/kernels). The switch is
# read when triton is first imported, which torch._dynamo (so any compile) does: set it before any test module
# loads, so the tests pass in any order. On a CUDA machine the kernels compile for the GPU instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: no cached graphs, no recompile limit carried over between tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model with its real weights, fp32 on CPU, and its tokenizer."""
    from trtllm_compile import load_default_model

    model, tokenizer = load_default_model()
    tokenizer.padding_side = "left"
    return model, tokenizer


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
