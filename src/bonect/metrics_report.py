"""The metrics of one synthetic CT as one record, their mean and 95 % CI over repeats, the table.

:func:`compute_metrics` computes the nine metrics of :mod:`bonect.image_metrics` (the paper's
and SynthRAD's) into a :class:`Metrics`; :func:`mean_ci95` summarises a metric over repeats
(cross-validation runs, patients); :func:`format_table` lays records out as the paper's results
table, in Markdown.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from bonect.image_metrics import bone_scores, mae, mae_body, mse, pearson_r, psnr, ssim

__all__ = ["Metrics", "compute_metrics", "format_table", "mean_ci95"]


@dataclass(frozen=True)
class Metrics:
    """Every metric of one synthetic CT against its reference (see :mod:`bonect.image_metrics`).

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
    sct: npt.ArrayLike,
    ct: npt.ArrayLike,
    *,
    mask: npt.ArrayLike | None = None,
    body_mask: npt.ArrayLike | None = None,
) -> Metrics:
    """Compute every metric of `sct` against `ct` (see :mod:`bonect.image_metrics`).

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
    s, c = np.asarray(sct), np.asarray(ct)
    body = mask if body_mask is None else body_mask
    bone = bone_scores(s, c, mask=mask)
    return Metrics(
        mae=mae(s, c, mask=mask),
        mse=mse(s, c, mask=mask),
        pearson_r=pearson_r(s, c, mask=mask),
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
