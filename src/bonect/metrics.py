"""Image-similarity metrics of a synthetic CT against its reference CT, and their reporting.

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
* A ``mask`` selects the voxels to evaluate; any dtype is accepted and non-zero means "evaluate".
  ``None`` evaluates every voxel. A mask of the wrong shape, an empty mask, or images of
  different shapes raise :class:`ValueError`.
* Sums are accumulated in float64, whatever the input dtype.
* Bone scores at one threshold: a 0/0 ratio is 1.0 when *both* bone sets are empty (nothing to
  find and nothing claimed: perfect agreement), and a ratio whose denominator is empty while
  the other set is not is 0.0. So precision with no predicted bone is 0.0 if the CT has bone
  (and 1.0 if it has none either); recall with no CT bone is 0.0 if bone was predicted; Dice
  is 1.0 when neither image has bone (otherwise it is always defined). The three scores are then
  averaged over the thresholds with equal weight.
* Pearson R is NaN when either image is constant over the evaluated voxels (zero variance).
* PSNR is ``inf`` when the two images agree exactly after clipping.
* SSIM follows Wang et al. (2004) with a Gaussian window (σ = 1.5, truncated at 3.5 σ, i.e. an
  11-voxel window, as scikit-image's ``gaussian_weights=True``), K1 = 0.01, K2 = 0.03 and
  population (not sample) covariances, computed in as many dimensions as the arrays have
  (3D for volumes), with scipy's ``reflect`` boundary. As in SynthRAD's evaluation, voxels
  outside the mask are set to the lower clip bound in both images before filtering, and the
  SSIM map is averaged over the mask (no border crop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage, stats

__all__ = [
    "BONE_THRESHOLDS",
    "BONE_WINDOW",
    "SYNTHRAD_RANGE",
    "BoneScores",
    "Metrics",
    "bone_scores",
    "compute_metrics",
    "format_table",
    "mae",
    "mae_body",
    "mean_ci95",
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
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
    window : tuple of float, optional
        ``(low, high)`` clip bounds in HU; the paper's bone window by default.

    Returns
    -------
    float
        The mean of ``|sct - ct|`` over the evaluated voxels.
    """
    s, c = _selected(sct, ct, mask, window)
    return _mean_abs(np.subtract(s, c, out=s))


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
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
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
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
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
    ``Dice = 2 |CT∩sCT| / (|CT| + |sCT|)``. Empty sets follow the module's convention: a 0/0
    score is 1.0 when both sets are empty and 0.0 when only the other one has bone.

    Parameters
    ----------
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
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
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    body_mask : array_like, optional
        Body voxels (non-zero); all voxels if omitted.

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
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
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
    sigma: float = 1.5,
    truncate: float = 3.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean structural similarity after clipping both images to `hu_range`.

    The local statistics are Gaussian-weighted (``scipy.ndimage.gaussian_filter`` over every
    axis, ``reflect`` boundary); ``C1 = (k1 R)²`` and ``C2 = (k2 R)²`` with ``R`` the width of
    `hu_range`. Voxels outside `mask` are set to ``hu_range[0]`` in both images before
    filtering, and the SSIM map is averaged over `mask`.

    Parameters
    ----------
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels to evaluate (non-zero); all voxels if omitted.
    hu_range : tuple of float, optional
        ``(low, high)`` clip bounds in HU; SynthRAD's [-1024, 3000] by default.
    sigma : float, optional
        Standard deviation of the Gaussian window in voxels.
    truncate : float, optional
        Window half-width in standard deviations (3.5 σ with σ = 1.5 gives 11 voxels).
    k1, k2 : float, optional
        The stabilising constants of Wang et al. (2004).

    Returns
    -------
    float
        Mean SSIM, at most 1.0 (equal images).
    """
    s_in, c_in = _as_pair(sct, ct)
    m = _check_mask(mask, s_in.shape)
    lo, hi = hu_range
    data_range = hi - lo
    # Shift so that the lower bound is 0 (as SynthRAD does); SSIM's constants assume [0, R].
    s = np.clip(s_in.astype(np.float64), lo, hi)
    s -= lo
    c = np.clip(c_in.astype(np.float64), lo, hi)
    c -= lo
    if m is not None:
        s[~m] = 0.0
        c[~m] = 0.0

    def blur(x: F64) -> F64:
        out: F64 = ndimage.gaussian_filter(x, sigma=sigma, truncate=truncate, mode="reflect")
        return out

    # Four filters suffice: the denominator needs only the sum of the two variances.
    mu_s = blur(s)
    mu_c = blur(c)
    cov = blur(s * c)
    np.square(s, out=s)
    np.square(c, out=c)
    s += c
    del c
    var_sum = blur(s)  # var_s + var_c + mu_s² + mu_c²
    del s
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_sc = mu_s * mu_c
    mu_sq = np.square(mu_s, out=mu_s)
    mu_sq += np.square(mu_c, out=mu_c)
    # SSIM = (2 mu_s mu_c + C1)(2 cov + C2) / ((mu_s² + mu_c² + C1)(var_s + var_c + C2))
    num = (2.0 * mu_sc + c1) * (2.0 * (cov - mu_sc) + c2)
    num /= (mu_sq + c1) * (var_sum - mu_sq + c2)
    values = num.ravel() if m is None else num[m]
    return float(values.mean(dtype=np.float64))


@dataclass(frozen=True)
class Metrics:
    """Every metric of one synthetic CT against its reference (see the module docstring).

    Attributes
    ----------
    mae, mse, pearson_r : float
        The paper's MAE (HU), MSE (HU²) and Pearson R, in the bone window.
    bone_precision, bone_recall, bone_dice : float
        The paper's bone scores, averaged over 300 to 900 HU.
    mae_body : float
        SynthRAD's MAE (HU) inside the body mask, unclipped.
    psnr, ssim : float
        SynthRAD's PSNR (dB) and SSIM, clipped to [-1024, 3000] HU.
    """

    mae: float
    mse: float
    pearson_r: float
    bone_precision: float
    bone_recall: float
    bone_dice: float
    mae_body: float
    psnr: float
    ssim: float

    def as_dict(self) -> dict[str, float]:
        """Return the metrics as a ``{field name: value}`` dict, in field order."""
        return asdict(self)


def compute_metrics(
    sct: ArrayLike,
    ct: ArrayLike,
    *,
    mask: ArrayLike | None = None,
    body_mask: ArrayLike | None = None,
) -> Metrics:
    """Compute every metric of `sct` against `ct`.

    Parameters
    ----------
    sct, ct : array_like
        Synthetic and reference CT in HU, same shape.
    mask : array_like, optional
        Voxels the paper's metrics evaluate (non-zero); all voxels if omitted.
    body_mask : array_like, optional
        The body, for SynthRAD's metrics (MAE, PSNR and SSIM); `mask` if omitted.

    Returns
    -------
    Metrics
        All nine metrics.
    """
    s, c = _as_pair(sct, ct)
    body = mask if body_mask is None else body_mask
    sv, cv = _selected(s, c, mask, BONE_WINDOW)
    bone = _bone_scores(sv, cv, BONE_THRESHOLDS)
    r = _pearson(sv, cv)
    d = np.subtract(sv, cv, out=sv)
    del cv
    window_mse = _mean_sq(d)
    window_mae = _mean_abs(d)
    return Metrics(
        mae=window_mae,
        mse=window_mse,
        pearson_r=r,
        bone_precision=bone.precision,
        bone_recall=bone.recall,
        bone_dice=bone.dice,
        mae_body=mae_body(s, c, body_mask=body),
        psnr=psnr(s, c, mask=body),
        ssim=ssim(s, c, mask=body),
    )


def mean_ci95(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95 % confidence interval of the mean (Student's t).

    Parameters
    ----------
    values : sequence of float
        One value per repeat (e.g. per cross-validation run).

    Returns
    -------
    tuple of float
        ``(mean, lower, upper)``. With a single value the bounds are NaN; NaN in `values`
        propagates to all three.

    Raises
    ------
    ValueError
        If `values` is empty.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(x.mean())
    if n == 1:
        return mean, math.nan, math.nan
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(stats.t.ppf(0.975, df=n - 1)) * sem
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class _Column:
    header: str
    field: str
    fmt: Callable[[float], str]
    higher_is_better: bool


def _fixed(digits: int, scale: float = 1.0) -> Callable[[float], str]:
    def fmt(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "∞" if v > 0 else "-∞"
        return f"{v * scale:.{digits}f}"

    return fmt


_COLUMNS: tuple[_Column, ...] = (
    _Column("MAE (HU)", "mae", _fixed(1), False),
    _Column("MSE (×10³ HU²)", "mse", _fixed(1, 1e-3), False),
    _Column("R", "pearson_r", _fixed(3), True),
    _Column("bone precision", "bone_precision", _fixed(3), True),
    _Column("bone recall", "bone_recall", _fixed(3), True),
    _Column("bone Dice", "bone_dice", _fixed(3), True),
    _Column("SynthRAD MAE", "mae_body", _fixed(1), False),
    _Column("PSNR (dB)", "psnr", _fixed(2), True),
    _Column("SSIM", "ssim", _fixed(3), True),
)


def format_table(rows: Mapping[str, Metrics], *, bold_best: bool = True) -> str:
    """Render metrics as a Markdown table laid out like the paper's results table.

    Columns: method | MAE (HU) | MSE (×10³ HU²) | R | bone precision | bone recall | bone Dice |
    SynthRAD MAE | PSNR (dB) | SSIM. MAEs have one decimal, MSE is in thousands of HU² with one
    decimal, PSNR two decimals, the others three; NaN is written ``n/a``.

    Parameters
    ----------
    rows : mapping of str to Metrics
        One row per method, in the mapping's order.
    bold_best : bool, optional
        With more than one row, set the best value of each column in bold, as the paper does
        (lowest error, highest of the others; ties are all bold; NaN is never best). The
        comparison is made on the displayed (rounded) values.

    Returns
    -------
    str
        The table, one line per row plus the header and separator, ending with a newline.
    """
    names = list(rows)
    cells = {name: [col.fmt(getattr(rows[name], col.field)) for col in _COLUMNS] for name in names}
    if bold_best and len(names) > 1:
        for j, col in enumerate(_COLUMNS):
            shown = {
                name: float(cells[name][j].replace("∞", "inf"))
                for name in names
                if cells[name][j] != "n/a"
            }
            if not shown:
                continue
            best = max(shown.values()) if col.higher_is_better else min(shown.values())
            for name, v in shown.items():
                if v == best:
                    cells[name][j] = f"**{cells[name][j]}**"
    header = ["method", *(col.header for col in _COLUMNS)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join([name.replace("|", "\\|"), *cells[name]]) + " |" for name in names]
    return "\n".join(lines) + "\n"
