import pytest
import torch


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
