"""Batch augmentation on tensors: the paper's geometry on input and target, MR contrast on input.

Geometry (the paper): random horizontal and vertical flips, rotation up to ±10° and a crop of up
to 10 % zoomed back to full size, drawn per slice and applied by one ``affine_grid`` /
``grid_sample`` over input and target stacked as two channels, so the two stay aligned.
Contrast (beyond the paper, because a model must survive other vendors, hospitals and
techniques), on the input only: a gamma and a random monotone intensity curve, a smooth
multiplicative bias field and Gaussian noise of a random level. Optionally (``dark_probability``)
a random monotone curve of the range below soft tissue only, air and soft tissue kept where they
are: the bone-signal relation is what techniques, vendors and echo times change most (a PETRA
cortex is brighter than a ZTE one of the same density), and the network should lean on shape
more than on how dark bone is. Optionally (``remap_probability``) a random remap of the whole
signal that need not be monotone, air kept dark: the label-free cousin of training on random
contrasts (SynthSeg), for a site's own data, where no tissue labels exist to redraw each
tissue's signal. Everything is drawn from the
``torch.Generator`` passed in, so a seed fixes the result; values stay in [0, 1].

Before either, :func:`random_windows` may cut one random square window per slice out of input
and target alike: a fully convolutional network trained on windows of a fine model cube costs
per step what a coarse cube costs, and runs on whole slices after.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentationOptions:
    """How strongly to augment; zeros (and ``flip=False``) switch an operation off."""

    flip: bool = True
    max_rotation_deg: float = 10.0
    max_crop: float = 0.10  # fraction of the side cut away at most
    contrast_probability: float = 0.8  # per slice and per contrast operation
    max_log_gamma: float = 0.4  # gamma in [exp(-0.4), exp(0.4)] ≈ [0.67, 1.49]
    curve_knots: int = 5
    max_curve_blend: float = 0.5  # blend of the identity with a random monotone curve
    bias_log_std: float = 0.2  # std of the log bias field on a coarse grid
    bias_cells: int = 4
    max_noise: float = 0.03  # std of the noise, in input units
    dark_probability: float = 0.0  # per slice: a random monotone curve below soft tissue
    max_dark_blend: float = 1.0  # its blend with the identity, at most
    remap_probability: float = 0.0  # per slice: a random, not monotone, remap of the signal
    remap_knots: int = 8

    @property
    def contrast(self) -> bool:
        return self.contrast_probability > 0


GEOMETRY_ONLY = AugmentationOptions(contrast_probability=0.0)


def augment(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    options: AugmentationOptions = AugmentationOptions(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment a batch of (n, c, h, w) inputs and (n, 1, h, w) targets in [0, 1]; returns new
    tensors. The c channels of an input (a slice and its neighbours, the 2.5D input) get the
    same geometry and contrast; only the noise differs between them.

    `generator` is a CPU generator; parameters are drawn from it and moved to the tensors'
    device, and the per-pixel noise comes from a device generator seeded from it.
    """
    if (
        inputs.ndim != 4
        or targets.ndim != 4
        or targets.shape[1] != 1
        or inputs.shape[:1] + inputs.shape[2:] != targets.shape[:1] + targets.shape[2:]
    ):
        raise ValueError(
            f"expected (n, c, h, w) inputs and (n, 1, h, w) targets, got {tuple(inputs.shape)}, "
            f"{tuple(targets.shape)}"
        )
    x, y = geometry(inputs, targets, generator, options)
    if options.contrast:
        x = contrast(x, generator, options)
    return x, y


def random_windows(
    inputs: torch.Tensor, targets: torch.Tensor, side: int | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One random ``side`` × ``side`` window per slice of (n, c, h, w) inputs and targets, the
    same in both; ``None`` (or a side not smaller than the slices) leaves them whole."""
    n, _, h, w = inputs.shape
    if side is None or (side >= h and side >= w):
        return inputs, targets
    rows = torch.randint(0, max(h - side, 0) + 1, (n,), generator=generator).tolist()
    cols = torch.randint(0, max(w - side, 0) + 1, (n,), generator=generator).tolist()

    def cut(batch: torch.Tensor) -> torch.Tensor:
        pieces = zip(batch, rows, cols, strict=True)
        windows = [b[:, r : r + side, c : c + side] for b, r, c in pieces]
        return torch.stack(windows).contiguous(memory_format=torch.channels_last)

    return cut(inputs), cut(targets)


def geometry(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    generator: torch.Generator,
    options: AugmentationOptions = AugmentationOptions(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, rotate and crop each slice, identically for input and target."""
    n = inputs.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)

    flips = torch.ones(n, 2, dtype=torch.float64)
    if options.flip:
        flips = torch.where(torch.rand(n, 2, generator=generator) < 0.5, -1.0, 1.0).double()
    angle = uniform(-1.0, 1.0) * math.radians(options.max_rotation_deg)
    scale = 1.0 - uniform(0.0, options.max_crop)  # the crop's side, as a fraction of the image
    shift = (1.0 - scale)[:, None] * (2 * torch.rand(n, 2, generator=generator).double() - 1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [
            torch.stack([cos * flips[:, 0], -sin * flips[:, 1], shift[:, 0]], dim=1),
            torch.stack([sin * flips[:, 0], cos * flips[:, 1], shift[:, 1]], dim=1),
        ],
        dim=1,
    ).to(device=inputs.device, dtype=inputs.dtype)
    both = torch.cat([inputs, targets], dim=1)
    grid = F.affine_grid(theta, list(both.shape), align_corners=False)
    out = F.grid_sample(both, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.clamp(0.0, 1.0)
    channels = inputs.shape[1]
    return out[:, :channels].contiguous(memory_format=torch.channels_last), out[
        :, channels:
    ].contiguous(memory_format=torch.channels_last)


def contrast(
    inputs: torch.Tensor,
    generator: torch.Generator,
    options: AugmentationOptions = AugmentationOptions(),
) -> torch.Tensor:
    """Randomise MR contrast: gamma, monotone curve, smooth bias field, noise; stays in [0, 1]."""
    n, _, h, w = inputs.shape
    device, dtype = inputs.device, inputs.dtype

    def draw(scale: float = 1.0) -> torch.Tensor:
        """(n, 1, 1, 1) on the device: uniform in [0, scale), or 0 where the slice is spared."""
        value = torch.rand(n, generator=generator) * scale
        spared = torch.rand(n, generator=generator) >= options.contrast_probability
        return value.masked_fill(spared, 0.0).to(device=device, dtype=dtype).view(n, 1, 1, 1)

    x = inputs.clamp(0.0, 1.0)
    if options.remap_probability > 0:
        x = remap(x, generator, options)
    if options.dark_probability > 0:
        x = dark_curve(x, generator, options)
    # gamma, log-uniform around 1
    x = x ** torch.exp((2 * draw() - 1) * options.max_log_gamma)
    # a monotone piecewise-linear curve through (0, 0) and (1, 1), blended with the identity
    k = max(options.curve_knots, 2)
    steps = -torch.log(torch.rand(n, k - 1, generator=generator).clamp_min(1e-6))
    knots = torch.cat([torch.zeros(n, 1), torch.cumsum(steps, dim=1)], dim=1)
    knots = (knots / knots[:, -1:]).to(device=device, dtype=dtype)
    blend = draw(options.max_curve_blend)
    x = (1 - blend) * x + blend * _piecewise_linear(x, knots, k - 1)
    # a smooth multiplicative bias field: a coarse random log field, upsampled
    cells = max(options.bias_cells, 2)
    coarse = torch.randn(n, 1, cells, cells, generator=generator).to(device=device, dtype=dtype)
    coarse = coarse * options.bias_log_std * (draw() > 0)
    x = x * torch.exp(F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True))
    # Gaussian noise of a random level, from a device generator seeded from `generator`
    sigma = draw(options.max_noise)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    noise_generator = torch.Generator(device=device).manual_seed(seed)
    noise = torch.randn(x.shape, generator=noise_generator, device=device, dtype=dtype)
    x = x + sigma * noise
    return x.clamp(0.0, 1.0).contiguous(memory_format=torch.channels_last)


SOFT_TISSUE_INPUT = 0.5
"""Soft tissue in the network's input: the MR normalised to soft tissue 1, halved
(:func:`bonect.converter.preprocess.model_input`)."""


def _piecewise_linear(x: torch.Tensor, ys: torch.Tensor, segments: int) -> torch.Tensor:
    """``x`` in [0, 1] through per-slice curves of ``segments`` equal segments with knot values
    ``ys`` (n, segments + 1)."""
    n = x.shape[0]
    position = (x * segments).clamp(0.0, segments - 1e-6)
    low = position.floor()
    frac = position - low
    index = low.long().reshape(n, -1)  # a copy where x is channels-last with several channels
    below = torch.gather(ys, 1, index).view(x.shape)
    above = torch.gather(ys, 1, index + 1).view(x.shape)
    return below + frac * (above - below)


def remap(
    inputs: torch.Tensor,
    generator: torch.Generator,
    options: AugmentationOptions = AugmentationOptions(remap_probability=1.0),
) -> torch.Tensor:
    """With probability ``options.remap_probability`` per slice, the signal through a random
    piecewise-linear curve whose knots (``remap_knots`` + 1, evenly spaced) take uniform values
    in [0, 1], in any order but the first: air (0) stays 0. What is dark may turn bright and
    the reverse, so the network must find tissue by shape and by its contrast to neighbours."""
    n = inputs.shape[0]
    device, dtype = inputs.device, inputs.dtype
    segments = max(options.remap_knots, 2)
    ys = torch.rand(n, segments + 1, generator=generator)
    ys[:, 0] = 0.0
    spared = torch.rand(n, generator=generator) >= options.remap_probability
    x = inputs.clamp(0.0, 1.0)
    curved = _piecewise_linear(x, ys.to(device=device, dtype=dtype), segments)
    keep = spared.to(device=device).view(n, 1, 1, 1)
    return torch.where(keep, x, curved)


def dark_curve(
    inputs: torch.Tensor,
    generator: torch.Generator,
    options: AugmentationOptions = AugmentationOptions(dark_probability=1.0),
) -> torch.Tensor:
    """A random monotone curve of the input below soft tissue, per slice (with probability
    ``options.dark_probability``, blended with the identity by up to ``max_dark_blend``): air
    (0) and soft tissue (0.5) stay, what lies between (bone, teeth, short-T2 tissue) moves."""
    n = inputs.shape[0]
    device, dtype = inputs.device, inputs.dtype
    knots = 4  # segments between air and soft tissue
    inner = torch.sort(torch.rand(n, knots - 1, generator=generator), dim=1).values
    ys = torch.cat([torch.zeros(n, 1), inner, torch.ones(n, 1)], dim=1) * SOFT_TISSUE_INPUT
    blend = torch.rand(n, generator=generator) * options.max_dark_blend
    spared = torch.rand(n, generator=generator) >= options.dark_probability
    blend = blend.masked_fill(spared, 0.0).to(device=device, dtype=dtype).view(n, 1, 1, 1)
    ys = ys.to(device=device, dtype=dtype)
    x = inputs.clamp(0.0, 1.0)
    curved = _piecewise_linear((x / SOFT_TISSUE_INPUT).clamp(0.0, 1.0), ys, knots)
    dark = x < SOFT_TISSUE_INPUT
    return torch.where(dark, (1 - blend) * x + blend * curved, x)
