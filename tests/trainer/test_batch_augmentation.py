"""Batch augmentation: aligned geometry, contrast on the input only, [0, 1], seeded."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bonect.trainer.batch_augmentation import (
    GEOMETRY_ONLY,
    AugmentationOptions,
    augment,
    dark_curve,
    random_windows,
    remap,
)

N, SIZE = 6, 32


def _batch(seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1] with a sharp bright square: features to misalign."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(N, 1, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear") * 0.6
    x[:, :, 5:12, 18:27] = 1.0
    return x


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_geometry_keeps_input_and_target_aligned() -> None:
    image = _batch()
    x, y = augment(image, image.clone(), _generator(1), GEOMETRY_ONLY)
    assert torch.equal(x, y)
    assert not torch.allclose(x, image, atol=1e-3)  # it did move


def test_contrast_changes_the_input_only() -> None:
    image = _batch()
    x_geo, y_geo = augment(image, image.clone(), _generator(2), GEOMETRY_ONLY)
    x, y = augment(image, image.clone(), _generator(2))
    assert torch.equal(y, y_geo)  # target: same geometry, no contrast change
    assert not torch.allclose(x, x_geo, atol=1e-3)


@pytest.mark.parametrize("fill", [0.0, 1.0, None])
def test_values_stay_in_the_unit_interval(fill: float | None) -> None:
    image = _batch() if fill is None else torch.full((N, 1, SIZE, SIZE), fill)
    strong = AugmentationOptions(contrast_probability=1.0, bias_log_std=1.0, max_noise=0.5)
    x, y = augment(image, image.clone(), _generator(3), strong)
    for t in (x, y):
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
        assert torch.isfinite(t).all()


def test_a_seed_fixes_the_result() -> None:
    image = _batch()
    a = augment(image, image.clone(), _generator(4))
    b = augment(image, image.clone(), _generator(4))
    c = augment(image, image.clone(), _generator(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_flips_alone_give_one_of_the_four_mirror_images() -> None:
    image = _batch()
    only_flips = replace(GEOMETRY_ONLY, max_rotation_deg=0.0, max_crop=0.0)
    x, _ = augment(image, image.clone(), _generator(6), only_flips)
    seen = set()
    for i in range(N):
        variants = {
            "none": image[i],
            "h": image[i].flip(-1),
            "v": image[i].flip(-2),
            "hv": image[i].flip(-1).flip(-2),
        }
        matches = [k for k, v in variants.items() if torch.allclose(x[i], v, atol=1e-5)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1


def test_rotation_and_crop_stay_small() -> None:
    """At most 10° and 10 %: the bright square's centre moves by a few pixels only."""
    image = torch.zeros(N, 1, SIZE, SIZE)
    image[:, :, 12:20, 12:20] = 1.0  # centred: rotation and zoom about the centre keep it there
    no_flips = replace(GEOMETRY_ONLY, flip=False)
    x, _ = augment(image, image.clone(), _generator(7), no_flips)
    rows = torch.arange(SIZE, dtype=torch.float32).view(1, SIZE, 1)
    for i in range(N):
        weight = x[i] / x[i].sum()
        centre_row = float((weight * rows).sum())
        centre_col = float((weight * rows.transpose(1, 2)).sum())
        assert abs(centre_row - 15.5) < 2.0 and abs(centre_col - 15.5) < 2.0
        assert 0.75 < float(x[i].sum()) / 64 < 1.3  # area kept within the crop's zoom


def test_the_contrast_curve_is_monotone() -> None:
    ramp = torch.linspace(0, 1, SIZE).repeat(N, 1, SIZE, 1)
    curves_only = AugmentationOptions(
        contrast_probability=1.0, bias_log_std=0.0, max_noise=0.0, max_curve_blend=1.0
    )
    plain = replace(curves_only, flip=False, max_rotation_deg=0.0, max_crop=0.0)
    x, _ = augment(ramp, ramp.clone(), _generator(8), plain)
    assert (x[:, :, :, 1:] - x[:, :, :, :-1] >= -1e-6).all()
    assert not torch.allclose(x, ramp, atol=1e-3)


@pytest.mark.parametrize(
    ("inputs", "targets"),
    [((2, 1, 8, 8), (2, 1, 8, 9)), ((2, 3, 8, 8), (3, 1, 8, 8)), ((2, 3, 8, 8), (2, 3, 8, 8))],
)
def test_mismatched_batches_are_refused(inputs: tuple[int, ...], targets: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected \(n, c, h, w\) inputs and \(n, 1, h, w\)"):
        augment(torch.zeros(inputs), torch.zeros(targets), _generator(0))


def test_the_channels_of_a_25d_input_move_with_their_slice() -> None:
    """Three channels (a slice and its neighbours) get the geometry of the target and the same
    contrast: with the noise off, equal channels stay equal, and each equals what a one-channel
    input becomes."""
    image = _batch()
    options = AugmentationOptions(contrast_probability=1.0, max_noise=0.0)
    x1, y1 = augment(image, image.clone(), _generator(4), options)
    x3, y3 = augment(image.repeat(1, 3, 1, 1), image.clone(), _generator(4), options)

    assert x3.shape == (N, 3, SIZE, SIZE) and y3.shape == (N, 1, SIZE, SIZE)
    torch.testing.assert_close(y3, y1)
    for c in range(3):
        torch.testing.assert_close(x3[:, c : c + 1], x1)
    assert not torch.allclose(x1, image, atol=1e-3)  # it did change


def test_random_windows_cut_the_same_square_from_input_and_target() -> None:
    image = _batch()
    target = image * 0.5
    x, y = random_windows(image, target, 16, _generator(3))
    assert x.shape == y.shape == (N, 1, 16, 16)
    assert torch.equal(y, x * 0.5)  # the same window of each slice in both
    for window, whole in zip(x, image, strict=True):  # each is a real window of its slice
        hits = [
            (r, c)
            for r in range(SIZE - 15)
            for c in range(SIZE - 15)
            if torch.equal(whole[:, r : r + 16, c : c + 16], window)
        ]
        assert hits
    again, _ = random_windows(image, target, 16, _generator(3))
    assert torch.equal(again, x)  # the generator fixes the windows
    whole_x, whole_y = random_windows(image, target, None, _generator(3))
    assert whole_x is image and whole_y is target


def test_the_dark_curve_moves_only_what_lies_between_air_and_soft_tissue() -> None:
    ramp = torch.linspace(0, 1, 201).view(1, 1, 1, 201).repeat(64, 1, 1, 1)
    curved = dark_curve(ramp, _generator(4))
    assert torch.equal(curved[..., 100:], ramp[..., 100:])  # soft tissue (0.5) and brighter
    assert torch.equal(curved[..., 0], ramp[..., 0])  # air
    assert bool((torch.diff(curved, dim=-1) >= -1e-6).all())  # still monotone: an order kept
    moved = (curved - ramp)[..., 1:100].abs().amax(dim=-1)
    assert float(moved.median()) > 0.02  # it does move bone's signal, slice by slice
    assert torch.equal(dark_curve(ramp, _generator(4)), curved)  # seeded
    spared = dark_curve(ramp, _generator(4), AugmentationOptions(dark_probability=0.0))
    assert torch.equal(spared, ramp)


def test_the_remap_keeps_air_dark_and_may_turn_the_order_of_tissues_around() -> None:
    ramp = torch.linspace(0, 1, 201).view(1, 1, 1, 201).repeat(64, 1, 1, 1)
    mapped = remap(ramp, _generator(5))
    assert torch.equal(mapped[..., 0], ramp[..., 0])  # air
    assert float(mapped.min()) >= 0.0 and float(mapped.max()) <= 1.0
    falling = (torch.diff(mapped, dim=-1) < -1e-4).any(dim=-1).float().mean()
    assert float(falling) > 0.9  # almost every curve turns some order around
    # bone (0.2) brighter than soft tissue (0.5) on some slices, darker on others
    brighter = mapped[..., 40] > mapped[..., 100]
    assert 0 < int(brighter.sum()) < 64
    assert torch.equal(remap(ramp, _generator(5)), mapped)  # seeded
    spared = remap(ramp, _generator(5), AugmentationOptions(remap_probability=0.0))
    assert torch.equal(spared, ramp)
    half = remap(ramp, _generator(6), AugmentationOptions(remap_probability=0.5))
    untouched = (half == ramp).all(dim=-1).float().mean()
    assert 0.2 < float(untouched) < 0.8
