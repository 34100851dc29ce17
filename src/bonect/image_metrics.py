"""Image-similarity metrics of a synthetic CT against its reference CT: the paper's and SynthRAD's.

Two families of metrics are computed, both on arrays of Hounsfield units (``sct`` is the
prediction, ``ct`` the reference, same shape, any number of dimensions):

* **The paper's** (Bambach & Ho, AJNR 2022), in the bone window W 2000 / L 500: both images are
  clipped to :data:`BONE_WINDOW` ([-500, 1500] HU) first. MAE, MSE (HU²), Pearson R, and bone
  precision, recall and Dice averaged over the thresholds :data:`BONE_THRESHOLDS`
  (300, 400, ..., 900 HU).
* **SynthRAD's**: MAE on unclipped HU inside the body mask; PSNR and SSIM after clipping both
  images to :data:`SYNTHRAD_RANGE` ([-1024, 3000] HU, data range 4024 HU).

Conventions
-----------
* ``sct`` and ``ct`` are array-likes of HU of the same shape. A ``mask`` selects the voxels to
  evaluate; any dtype is accepted and non-zero means "evaluate". ``None`` evaluates every
  voxel. A mask of the wrong shape, an empty mask, or images of different shapes raise
  :class:`ValueError`.
* Sums are accumulated in float64, whatever the input dtype.
* Bone scores at one threshold: a 0/0 ratio is 1.0 when *both* bone sets are empty (nothing to
  find and nothing claimed: perfect agreement), and a ratio whose denominator is empty while
  the other set is not is 0.0. So precision with no predicted bone is 0.0 if the CT has bone
  (and 1.0 if it has none either); recall with no CT bone is 0.0 if bone was predicted; Dice
  is 1.0 when neither image has bone (otherwise it is always defined). The three scores are then
  averaged over the thresholds with equal weight.
* Pearson R is NaN when either image is constant over the evaluated voxels (zero variance).
* PSNR is ``inf`` when the two images agree exactly after clipping.
* SSIM is SynthRAD 2023's (see :func:`ssim`): scikit-image's ``structural_similarity`` on
  float32 images clipped to :data:`SYNTHRAD_RANGE`, outside the mask set to its lower bound,
  with a 7-voxel uniform window in as many dimensions as the arrays have (3D for volumes); the
  SSIM map is averaged over the mask after cropping 3 voxels at every border. It is NaN for an
  image with an axis shorter than 7 voxels, or a mask with no voxel inside that border.

All nine metrics of one synthetic CT at once (:func:`bonect.metrics_report.compute_metrics`),
their mean and confidence interval over repeats, and the results table are in
:mod:`bonect.metrics_report`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from skimage.metrics import structural_similarity
from skimage.util import crop

__all__ = [
    "BONE_THRESHOLDS",
    "BONE_WINDOW",
    "SSIM_CROP",
    "SSIM_WINDOW",
    "SYNTHRAD_RANGE",
    "BoneScores",
    "bone_scores",
    "mae",
    "mae_body",
    "mean_error",
    "mse",
    "pearson_r",
    "psnr",
    "ssim",
]

ArrayLike = npt.ArrayLike
F64 = npt.NDArray[np.float64]

BONE_WINDOW: tuple[float, float] = (-500.0, 1500.0)
"""The paper's bone window W 2000 / L 500 in HU: images are clipped to it before its metrics."""

BONE_THRESHOLDS: tuple[float, ...] = (300.0, 400.0, 500.0, 600.0, 700.0, 800.0, 900.0)
"""Bone thresholds in HU (40 % to 70 % grey level in the bone window) the bone scores average."""

SYNTHRAD_RANGE: tuple[float, float] = (-1024.0, 3000.0)
"""SynthRAD's clip range in HU for PSNR and SSIM; its width (4024 HU) is the data range."""

SSIM_WINDOW = 7
"""Side of SSIM's uniform window in voxels (scikit-image's default, which SynthRAD keeps)."""

SSIM_CROP = SSIM_WINDOW // 2
"""Voxels cropped at every border before SSIM is averaged, as scikit-image and SynthRAD do."""


def _check_mask(mask: ArrayLike | None, shape: tuple[int, ...]) -> npt.NDArray[np.bool_] | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask has shape {m.shape}, the images {shape}")
    m = m.astype(bool, copy=False)
    if not m.any():
        raise ValueError("mask selects no voxels")
    return m


def _as_pair(sct: ArrayLike, ct: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sct)
    c = np.asarray(ct)
    if s.shape != c.shape:
        raise ValueError(f"sct has shape {s.shape}, ct {c.shape}: they must match")
    if s.size == 0:
        raise ValueError("images are empty")
    return s, c


def _selected(
    sct: ArrayLike,
    ct: ArrayLike,
    mask: ArrayLike | None,
    clip: tuple[float, float] | None,
) -> tuple[F64, F64]:
    """Return the evaluated voxels of both images as flat float64 arrays, clipped if asked."""
    s, c = _as_pair(sct, ct)
    m = _check_mask(mask, s.shape)
    if m is None:
        sv = s.astype(np.float64).ravel()
        cv = c.astype(np.float64).ravel()
    else:
        sv = s[m].astype(np.float64)
        cv = c[m].astype(np.float64)
    if clip is not None:
        np.clip(sv, clip[0], clip[1], out=sv)
        np.clip(cv, clip[0], clip[1], out=cv)
    return sv, cv


def _mean_abs(d: F64) -> float:
    np.abs(d, out=d)
    return float(d.mean(dtype=np.float64))


def _mean_sq(d: F64) -> float:
    return float(np.dot(d, d) / d.size)


def mae(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    window: tuple[float, float] = BONE_WINDOW,
) -> float:
    """Mean absolute error in HU after clipping both images to `window`.

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    window : tuple of float, optional
        ``(low, high)`` clip bounds in HU; the paper's bone window by default.

    Returns
    -------
    float
        The mean of ``|sct - ct|`` over the evaluated voxels.
    """
    s, c = _selected(sct, ct, mask, window)
    return _mean_abs(np.subtract(s, c, out=s))


def mean_error(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    window: tuple[float, float] = BONE_WINDOW,
) -> float:
    """Mean signed error ``sct - ct`` in HU after clipping both images to `window`.

    Negative when the synthetic CT is too low on average (e.g. bone predicted as soft tissue).
    Parameters and clipping are those of :func:`mae`.
    """
    s, c = _selected(sct, ct, mask, window)
    return float(np.subtract(s, c, out=s).mean(dtype=np.float64))


def mse(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    window: tuple[float, float] = BONE_WINDOW,
) -> float:
    """Mean squared error in HU² after clipping both images to `window`.

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    window : tuple of float, optional
        ``(low, high)`` clip bounds in HU; the paper's bone window by default.

    Returns
    -------
    float
        The mean of ``(sct - ct)²`` over the evaluated voxels.
    """
    s, c = _selected(sct, ct, mask, window)
    return _mean_sq(np.subtract(s, c, out=s))


def _pearson(s: F64, c: F64) -> float:
    if s.min() == s.max() or c.min() == c.max():  # exact test: rounding cannot fake variance
        return math.nan
    s = s - s.mean()
    c = c - c.mean()
    ss = float(np.dot(s, s))
    cc = float(np.dot(c, c))
    r = float(np.dot(s, c)) / math.sqrt(ss * cc)
    return max(-1.0, min(1.0, r))


def pearson_r(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    window: tuple[float, float] = BONE_WINDOW,
) -> float:
    """Pearson correlation coefficient of the voxel values after clipping to `window`.

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    window : tuple of float, optional
        ``(low, high)`` clip bounds in HU; the paper's bone window by default.

    Returns
    -------
    float
        R in [-1, 1]; NaN when either image is constant over the evaluated voxels.
    """
    s, c = _selected(sct, ct, mask, window)
    return _pearson(s, c)


@dataclass(frozen=True)
class BoneScores:
    """Bone precision, recall and Dice, each averaged over the thresholds."""

    precision: float
    recall: float
    dice: float


def _ratio(num: int, den: int, other: int) -> float:
    """``num / den``, or the empty-set convention: 1.0 if `other` is empty too, else 0.0."""
    if den == 0:
        return 1.0 if other == 0 else 0.0
    return num / den


def _bone_scores(s: F64, c: F64, thresholds: Sequence[float]) -> BoneScores:
    if len(thresholds) == 0:
        raise ValueError("at least one bone threshold is needed")
    both = np.minimum(s, c)  # a voxel is bone in both images iff min(sct, ct) >= t
    pre = rec = dice = 0.0
    for t in thresholds:
        n_s = int(np.count_nonzero(s >= t))
        n_c = int(np.count_nonzero(c >= t))
        n_sc = int(np.count_nonzero(both >= t))
        pre += _ratio(n_sc, n_s, n_c)
        rec += _ratio(n_sc, n_c, n_s)
        dice += 1.0 if n_s + n_c == 0 else 2.0 * n_sc / (n_s + n_c)
    n = len(thresholds)
    return BoneScores(precision=pre / n, recall=rec / n, dice=dice / n)


def bone_scores(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    thresholds: Sequence[float] = BONE_THRESHOLDS,
    window: tuple[float, float] = BONE_WINDOW,
) -> BoneScores:
    """Bone precision, recall and Dice averaged over `thresholds`.

    At threshold ``t``, ``CT(t) = ct >= t`` and ``sCT(t) = sct >= t`` (after clipping to
    `window`, which leaves thresholds inside the window unaffected); then
    ``Pre = |CT∩sCT| / |sCT|``, ``Rec = |CT∩sCT| / |CT|`` and
    ``Dice = 2 |CT∩sCT| / (|CT| + |sCT|)``; empty sets as in the module's conventions.

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    thresholds : sequence of float, optional
        Bone thresholds in HU, 300 to 900 by 100 by default; each weighs the same.
    window : tuple of float, optional
        ``(low, high)`` clip bounds in HU; the paper's bone window by default.

    Returns
    -------
    BoneScores
        Threshold-averaged precision, recall and Dice.
    """
    s, c = _selected(sct, ct, mask, window)
    return _bone_scores(s, c, thresholds)


def mae_body(sct: ArrayLike, ct: ArrayLike, *, body_mask: ArrayLike | None = None) -> float:
    """SynthRAD's MAE: mean absolute error in HU inside the body mask, without clipping.

    Parameters
    ----------
    sct, ct, body_mask : array_like
        See the module's conventions (`body_mask` is a mask).

    Returns
    -------
    float
        The mean of ``|sct - ct|`` over the body.
    """
    s, c = _selected(sct, ct, body_mask, None)
    return _mean_abs(np.subtract(s, c, out=s))


def psnr(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    hu_range: tuple[float, float] = SYNTHRAD_RANGE,
) -> float:
    """Peak signal-to-noise ratio in dB after clipping both images to `hu_range`.

    ``PSNR = 10 log10(R² / MSE)`` with ``R = hu_range[1] - hu_range[0]`` (4024 HU by default)
    and the MSE taken over the evaluated voxels.

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    hu_range : tuple of float, optional
        ``(low, high)`` clip bounds in HU; SynthRAD's [-1024, 3000] by default.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the clipped images are equal.
    """
    s, c = _selected(sct, ct, mask, hu_range)
    err = _mean_sq(np.subtract(s, c, out=s))
    if err == 0.0:
        return math.inf
    data_range = hu_range[1] - hu_range[0]
    return 10.0 * math.log10(data_range * data_range / err)


def ssim(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    hu_range: tuple[float, float] = SYNTHRAD_RANGE,
) -> float:
    """Mean structural similarity as SynthRAD 2023 computes it.

    The reference is ``ImageMetrics.ssim`` in the challenge's evaluation code
    (github.com/SynthRAD2023/metrics, ``functions/image_metrics.py``): both images are clipped
    to `hu_range`; voxels outside `mask` are set to its lower bound in both; both are shifted
    so that the lower bound is 0; scikit-image's ``structural_similarity`` gives the full SSIM
    map with its defaults (a :data:`SSIM_WINDOW`-voxel uniform window over every axis, sample
    covariances, K1 = 0.01, K2 = 0.03) and ``data_range`` the width of `hu_range`; the
    :data:`SSIM_CROP` voxels at each border, where the window runs off the image, are cropped,
    and the map is averaged over the mask there (over every voxel without a mask). As in the
    challenge, the images are float32 (it reads them as such).

    Parameters
    ----------
    sct, ct, mask : array_like
        See the module's conventions.
    hu_range : tuple of float, optional
        ``(low, high)`` clip bounds in HU; SynthRAD's [-1024, 3000] by default.

    Returns
    -------
    float
        Mean SSIM, at most 1.0 (equal images); NaN when an axis is shorter than the window or
        the mask has no voxel inside the cropped border.
    """
    s_in, c_in = _as_pair(sct, ct)
    m = _check_mask(mask, s_in.shape)
    if min(s_in.shape) < SSIM_WINDOW:
        return math.nan
    lo, hi = hu_range
    s = np.clip(s_in.astype(np.float32), lo, hi)
    c = np.clip(c_in.astype(np.float32), lo, hi)
    if m is not None:
        s[~m] = lo
        c[~m] = lo
    s -= np.float32(lo)
    c -= np.float32(lo)
    _, full = structural_similarity(c, s, data_range=hi - lo, full=True)
    del s, c
    inner = crop(np.asarray(full), SSIM_CROP)
    if m is None:
        return float(inner.mean(dtype=np.float64))
    inside = crop(m, SSIM_CROP)
    if not inside.any():
        return math.nan
    return float(inner[inside].mean(dtype=np.float64))
