"""Runtime selection and execution. This machine (CPU) and the project's Hopper GPUs cannot run tensorrt_rtx
engines: the CPU case is tested here, execution only where a supported GPU is present (`gpu` marker)."""

import pytest
import torch
from network_support import MAX_BATCH, MAX_SEQ
from support import TINY_MODELS

from trtllm_compile.tensorrt import (
    TensorRTEngine,
    TensorRTGenerator,
    TensorRTRuntimeUnavailableError,
    build,
    refit,
    runtime_unavailable_reason,
    select_target,
)
from trtllm_compile.tensorrt import trt as flavour

cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
needs_runtime = pytest.mark.skipif(
    runtime_unavailable_reason() is not None, reason=f"engines cannot run here: {runtime_unavailable_reason()}"
)


@cpu_only
def test_reason_on_a_machine_without_gpu():
    assert "no CUDA GPU" in runtime_unavailable_reason()


@cpu_only
def test_target_tensorrt_raises_with_the_reason():
    with pytest.raises(TensorRTRuntimeUnavailableError, match="no CUDA GPU.*target='auto'"):
        select_target("tensorrt")


@cpu_only
def test_target_auto_falls_back_with_a_warning():
    with pytest.warns(UserWarning, match="cannot run here.*no CUDA GPU.*reference"):
        assert select_target("auto") == "reference"


def test_explicit_targets_and_unknown_ones():
    assert select_target("reference") == "reference"
    with pytest.raises(ValueError, match="unknown target"):
        select_target("tpu")


def test_hopper_is_refused_by_tensorrt_rtx(monkeypatch):
    if not flavour.IS_RTX:
        pytest.skip("the full TensorRT package runs on Hopper")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H100 80GB HBM3")
    reason = runtime_unavailable_reason()
    assert "compute capability 9.0" in reason and "H100" in reason and "89" in reason
    with pytest.warns(UserWarning, match="compute capability 9.0.*cuda target"):
        assert select_target("auto") == "cuda"


def test_no_tensorrt_installed(monkeypatch):
    monkeypatch.setattr(flavour, "trt", None)
    assert flavour.INSTALL_HINT in runtime_unavailable_reason()


@cpu_only
def test_engines_refuse_to_load_without_a_runtime(tiny_builds):
    _, built = tiny_builds("llama")
    with pytest.raises(TensorRTRuntimeUnavailableError, match="no CUDA GPU"):
        TensorRTEngine(built.engines["decode"].path)
    with pytest.raises(TensorRTRuntimeUnavailableError):
        TensorRTGenerator(built)


def test_refit_needs_refittable_engines(tiny_builds):
    _, built = tiny_builds("llama")
    with pytest.raises(ValueError, match="refittable=False"):
        refit(built, built.model.state_dict())


@pytest.mark.gpu
@needs_runtime
@pytest.mark.parametrize("name", ["llama", "gemma3", "gpt2"])
def test_greedy_generate_matches_transformers(name, tmp_path):
    model = TINY_MODELS[name].build().half().cuda()
    built = build(model, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=tmp_path, progress=False)
    prompt = torch.randint(0, 256, (2, 6), device="cuda")
    expected = model.generate(prompt, max_new_tokens=8, do_sample=False)
    assert torch.equal(TensorRTGenerator(built).generate(prompt, max_new_tokens=8), expected)


@pytest.mark.gpu
@needs_runtime
def test_refit_changes_the_engine_weights(tmp_path):
    model = TINY_MODELS["llama"].build().half()
    built = build(model, max_batch_size=MAX_BATCH, max_seq_len=MAX_SEQ, cache_dir=tmp_path, refittable=True)
    prompt = torch.randint(0, 256, (1, 6), device="cuda")
    before = TensorRTGenerator(built).generate(prompt, max_new_tokens=4)
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    refit(built, state)
    reference = TINY_MODELS["llama"].build().half().cuda()
    reference.load_state_dict(state)
    after = TensorRTGenerator(built).generate(prompt, max_new_tokens=4)
    assert torch.equal(after, reference.generate(prompt, max_new_tokens=4, do_sample=False))
    assert not torch.equal(after, before)
