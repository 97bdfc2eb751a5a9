"""The one `trt` alias and the flavour differences kept in trtllm_compile/tensorrt/trt.py."""

import pytest
import torch

from trtllm_compile.tensorrt import build
from trtllm_compile.tensorrt import trt as flavour


def test_alias_is_an_importable_builder():
    assert flavour.trt is not None and hasattr(flavour.trt, "Builder")
    assert flavour.FLAVOUR in ("tensorrt", "tensorrt_rtx")
    assert flavour.version().startswith(flavour.FLAVOUR)


def test_rtx_targets_name_explicit_compute_capabilities():
    if not flavour.IS_RTX:
        pytest.skip("full TensorRT builds for the local GPU")
    assert flavour.DEFAULT_SM in flavour.supported_sms() and "90" not in flavour.supported_sms()
    config = flavour.trt.Builder(flavour.trt_logger()).create_builder_config()
    with pytest.raises(ValueError, match="cannot target SM90.*89"):
        flavour.set_compute_target(config, "90")
    flavour.set_compute_target(config, "86")
    assert config.num_compute_capabilities == 1


def test_networks_are_strongly_typed():
    network = flavour.trt.Builder(flavour.trt_logger()).create_network(flavour.network_flags())
    assert network.get_flag(flavour.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def test_missing_tensorrt_names_the_install_command(monkeypatch):
    monkeypatch.setattr(flavour, "trt", None)
    with pytest.raises(flavour.TensorRTUnavailableError, match=r'pip install "trtllm-compile\[tensorrt\]"'):
        build(torch.nn.Linear(2, 2))
