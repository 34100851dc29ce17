"""How well the spread between the three planes finds the sCT's errors, and its threshold.

The U-Net predicts each voxel three times (axial, coronal, sagittal slices); where the three
disagree the fused value is often wrong. On patients with a known CT, this module collects the
spread and the absolute error of every head voxel, measures how well the spread ranks the
voxels wrong by more than ``error_hu`` (ROC AUC, Spearman's rho, the MAE of the 10 % most and
least uncertain voxels), and calibrates the threshold that the sCT's uncertainty object and
summary use: the spread that maximises the F1 score (the harmonic mean of precision and recall)
of "spread > threshold" as a detector of |error| > ``error_hu``. (Youden's J, which weighs the
rare wrong voxels against the many right ones, picks a threshold that flags a third of the head
and so says little; F1 flags a region about the size of the errors it is meant to show.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from bonect.converter.pipeline import ALL_PLANES, Method, convert
from bonect.converter.volume import Volume

F64 = npt.NDArray[np.float64]
ERROR_HU = 200.0


@dataclass(frozen=True)
class SpreadCalibration:
    """The spread as a detector of voxels wrong by more than ``error_hu``."""

    error_hu: float
    threshold_hu: float  # the F1 optimum
    precision: float  # of the voxels above it, the share wrong by more than error_hu
    recall: float  # of the voxels wrong by more than error_hu, the share above it
    auc: float
    spearman: float
    share_above: float  # of head voxels above the threshold
    mae_top10_hu: float  # MAE of the 10 % voxels with the largest spread
    mae_rest_hu: float  # ... and of the other 90 %
    voxels: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 4) for k, v in asdict(self).items()}


def roc_auc(score: F64, positive: npt.NDArray[np.bool_]) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (Mann-Whitney, ties averaged)."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def f1_threshold(score: F64, positive: npt.NDArray[np.bool_], *, candidates: int = 200) -> float:
    """The ``score`` threshold (``score > t`` flags) with the best F1 score for ``positive``."""
    grid = np.unique(np.quantile(score, np.linspace(0.5, 0.999, candidates)))
    n_pos = max(int(positive.sum()), 1)
    best, best_f1 = float(grid[0]), -1.0
    for t in grid:
        flagged = score > t
        hits = float((flagged & positive).sum())
        f1 = 2 * hits / (float(flagged.sum()) + n_pos)
        if f1 > best_f1:
            best, best_f1 = float(t), f1
    return best


def spread_and_error(
    method: Method, mr: Volume, ct: Volume, body: npt.NDArray[np.bool_]
) -> tuple[F64, F64]:
    """Spread (HU) and |sCT - CT| (HU) of the head voxels of one patient (3-plane U-Net)."""
    conversion = convert(mr, method, planes=ALL_PLANES, uncertainty=True)
    if conversion.uncertainty is None:
        raise ValueError("the method gives no spread (the classical map has no planes)")
    spread = np.asarray(conversion.uncertainty.array, dtype=np.float64)[body]
    error = np.abs(np.asarray(conversion.sct.array, np.float64) - np.asarray(ct.array, np.float64))
    return spread, error[body]


def calibrate(
    spreads: Sequence[F64],
    errors: Sequence[F64],
    *,
    error_hu: float = ERROR_HU,
    threshold_hu: float | None = None,
) -> SpreadCalibration:
    """Measure the spread against the errors of several patients; the threshold is calibrated
    unless given (to score a calibrated threshold on other patients)."""
    spread, error = np.concatenate(spreads), np.concatenate(errors)
    positive = error > error_hu
    threshold = f1_threshold(spread, positive) if threshold_hu is None else threshold_hu
    top = spread >= np.quantile(spread, 0.9)
    flagged = spread > threshold
    return SpreadCalibration(
        error_hu=error_hu,
        threshold_hu=threshold,
        precision=float((flagged & positive).sum() / max(int(flagged.sum()), 1)),
        recall=float((flagged & positive).sum() / max(int(positive.sum()), 1)),
        auc=roc_auc(spread, positive),
        spearman=float(stats.spearmanr(spread, error).statistic),
        share_above=float(np.mean(spread > threshold)),
        mae_top10_hu=float(error[top].mean()),
        mae_rest_hu=float(error[~top].mean()),
        voxels=int(spread.size),
    )
