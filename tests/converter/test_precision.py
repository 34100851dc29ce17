"""``[converter] precision``: which arithmetic the U-Net's forward uses where."""

from __future__ import annotations

import pytest
import torch

from bonect.config import ConverterConfig
from bonect.converter.inference import cpu_computes_bfloat16, forward_context, forward_dtype
from bonect.converter.networks import build_model

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_the_precision_named_is_the_precision_used() -> None:
    assert forward_dtype(CPU, "float32") is None
    assert forward_dtype(CUDA, "float32") is None
    assert forward_dtype(CPU, "bfloat16") is torch.bfloat16
    assert forward_dtype(CUDA, "auto") is torch.float16  # as before the setting existed
    expected = torch.bfloat16 if cpu_computes_bfloat16() else None
    assert forward_dtype(CPU, "auto") is expected


def test_a_precision_the_config_does_not_know_is_refused() -> None:
    assert ConverterConfig().precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        ConverterConfig(precision="float16")  # type: ignore[arg-type]


@pytest.mark.parametrize("architecture", ["light_unet", "vgg16_unet"])
def test_the_head_stays_float32_under_bfloat16_autocast(architecture: str) -> None:
    """The layers compute in bfloat16, the 1x1 head and sigmoid in float32: its rounding would
    show in HU (networks.head_in_float32)."""
    torch.manual_seed(0)
    arguments = {"base_filters": 4, "levels": 2} if architecture == "light_unet" else {}
    network = build_model(architecture, arguments).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.inference_mode(), forward_context(CPU, "bfloat16"):
        features: list[torch.Tensor] = []
        network.decoder[-1].register_forward_hook(lambda _m, _i, output: features.append(output))
        y = network(x)
    assert features[0].dtype is torch.bfloat16  # the layers before the head did use bfloat16
    assert y.dtype is torch.float32
    with torch.inference_mode():
        expected = torch.sigmoid(network.head(features[0].float()))
    assert torch.equal(y, expected)
