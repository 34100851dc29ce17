"""``bonect quality``: the U-Net against the classical map on a phantom family, per patient.

Renders patients of one phantom family (:mod:`bonect.phantom.variation`; the ``shifted``
family is drawn from ranges disjoint from what the bundled model trained on), converts each with
the U-Net (three planes, with the spread between them) and with the classical map, and scores
both inside the body against the CT on the MR grid: SynthRAD's MAE, the mean signed error
(bias), the paper's bone Dice (300-900 HU). The spread is scored as a detector of voxels wrong
by more than 200 HU (ROC AUC, pooled over the patients) at the model's calibrated threshold.
Writes ``quality.json``, ``quality.md`` and, per patient, a picture in the layout of the
paper's Figure 1 (``figure1_<patient>.png``: MR, CT, each method's sCT and its difference to
the CT) to the output folder.

Each patient also gets the score of a *perfect model at the model's input size*: the true CT
sampled onto the model cube and back, the best any network of that input size can do, since
every prediction passes through the cube. Where the U-Net falls short of a goal, this column
says whether a better network could reach it or only a finer cube.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bonect.converter.model_folder import LoadedModel
from bonect.converter.pipeline import ALL_PLANES, Classical, convert, uncertainty_threshold_hu
from bonect.converter.preprocess import cube_round_trip, prepare
from bonect.figures import figure_one
from bonect.hounsfield import AIR_HU
from bonect.metrics_report import compute_metrics
from bonect.phantom.generate import PhantomCase, generate_case, patient_seed
from bonect.phantom.variation import Family, draw_acquisition
from bonect.trainer.spread_calibration import SpreadCalibration, calibrate

logger = logging.getLogger(__name__)

QUALITY_SEED = 4242  # no training run of the bundled model draws from this seed


@dataclass(frozen=True)
class PatientScore:
    """One method on one patient, inside the body."""

    mae_hu: float
    mean_error_hu: float
    bone_dice: float
    ssim: float


@dataclass(frozen=True)
class PatientRow:
    name: str
    description: str
    unet: PatientScore
    classical: PatientScore
    perfect: PatientScore  # the true CT through the model cube and back

    @property
    def ratio(self) -> float:
        return self.unet.mae_hu / self.classical.mae_hu


@dataclass(frozen=True)
class CohortQuality:
    family: Family
    input_size: int
    rows: list[PatientRow]
    spread: SpreadCalibration
    seconds: float

    @property
    def ratio(self) -> float:
        unet = float(np.mean([r.unet.mae_hu for r in self.rows]))
        return unet / float(np.mean([r.classical.mae_hu for r in self.rows]))

    def table(self) -> str:
        lines = [
            "| patient | case | U-Net MAE | classical MAE | ratio | U-Net mean error "
            f"| U-Net bone Dice | classical bone Dice | perfect at {self.input_size}³: MAE, Dice |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.name} | {r.description} | {r.unet.mae_hu:.1f} | {r.classical.mae_hu:.1f} "
                f"| {r.ratio:.2f} | {r.unet.mean_error_hu:+.1f} | {r.unet.bone_dice:.3f} "
                f"| {r.classical.bone_dice:.3f} "
                f"| {r.perfect.mae_hu:.1f}, {r.perfect.bone_dice:.3f} |"
            )
        mean = {
            k: float(np.mean([getattr(r.unet, k) for r in self.rows]))
            for k in ("mae_hu", "mean_error_hu", "bone_dice")
        }
        classical, perfect = (
            {
                k: float(np.mean([getattr(getattr(r, method), k) for r in self.rows]))
                for k in ("mae_hu", "bone_dice")
            }
            for method in ("classical", "perfect")
        )
        lines.append(
            f"| **mean** | {len(self.rows)} patients | {mean['mae_hu']:.1f} "
            f"| {classical['mae_hu']:.1f} | {self.ratio:.2f} | {mean['mean_error_hu']:+.1f} "
            f"| {mean['bone_dice']:.3f} | {classical['bone_dice']:.3f} "
            f"| {perfect['mae_hu']:.1f}, {perfect['bone_dice']:.3f} |"
        )
        s = self.spread
        lines.append("")
        lines.append(
            f"3-plane spread as a detector of |error| > {s.error_hu:.0f} HU: AUC {s.auc:.3f}, "
            f"Spearman {s.spearman:.2f}; above the threshold of {s.threshold_hu:.0f} HU: "
            f"{100 * s.share_above:.1f} % of the head; MAE {s.mae_top10_hu:.0f} HU in the 10 % "
            f"most uncertain voxels, {s.mae_rest_hu:.0f} HU elsewhere."
        )
        return "\n".join(lines)


def describe(case: PhantomCase) -> str:
    """A short, PHI-free description of a phantom patient for tables."""
    p = case.params
    age = "child" if p.paediatric else "adult"
    spacing = "x".join(f"{v:g}" for v in case.mr.spacing)
    extras = []
    if p.pathology.craniotomy is not None:
        extras.append("craniotomy" + (" + plates" if p.pathology.plate else ""))
    if p.pathology.fillings:
        extras.append(f"{len(p.pathology.fillings)} fillings")
    if p.pathology.haemorrhage is not None:
        extras.append("haemorrhage")
    if any(v > 0 for v in p.pathology.mucus):
        extras.append("mucus")
    tail = f", {', '.join(extras)}" if extras else ""
    return f"{age}, {case.contrast.upper()}, {spacing} mm{tail}"


def _score(sct: np.ndarray, ct: np.ndarray, body: np.ndarray) -> PatientScore:
    metrics = compute_metrics(sct, ct, mask=body, body_mask=body)
    return PatientScore(
        mae_hu=metrics.mae_body,
        mean_error_hu=float(np.mean(sct[body].astype(np.float64) - ct[body])),
        bone_dice=metrics.bone_dice,
        ssim=metrics.ssim,
    )


def evaluate_cohort(
    model: LoadedModel,
    family: Family,
    *,
    patients: int,
    seed: int = QUALITY_SEED,
    spacing: tuple[float, float, float] | None = None,
    figures: Path | None = None,
    progress: bool = True,
) -> CohortQuality:
    """Score ``model`` and the classical map on ``patients`` patients of ``family``
    (``spacing`` replaces the drawn MR voxel size, e.g. for a quick look); with ``figures``, a
    Figure-1 picture per patient is written into that folder."""
    started = time.perf_counter()
    threshold = uncertainty_threshold_hu(model)
    rows, spreads, errors = [], [], []
    for index in tqdm(
        range(patients), desc=f"{family} patients", unit="patient", disable=not progress
    ):
        acquisition = None
        if spacing is not None:
            acquisition = replace(
                draw_acquisition(patient_seed(seed, index), family), spacing=spacing
            )
        case = generate_case(
            seed, index, contrast=None, acquisition=acquisition, ct_acquisition=None, family=family
        )
        body = case.labels.array > 0
        ct = np.asarray(case.ct_on_mr.array, dtype=np.float32)
        unet = convert(case.mr, model, planes=ALL_PLANES, uncertainty=True)
        classical = convert(case.mr, Classical())
        perfect = cube_round_trip(
            case.ct_on_mr, prepare(case.mr, model.manifest.input_size), case.mr, cval=AIR_HU
        )
        unet_sct = np.asarray(unet.sct.array, dtype=np.float32)
        if unet.uncertainty is not None:
            spreads.append(np.asarray(unet.uncertainty.array, dtype=np.float64)[body])
            errors.append(np.abs(unet_sct[body].astype(np.float64) - ct[body]))
        row = PatientRow(
            name=f"{family}-{index + 1}",
            description=describe(case),
            unet=_score(unet_sct, ct, body),
            classical=_score(np.asarray(classical.sct.array, dtype=np.float32), ct, body),
            perfect=_score(perfect, ct, body),
        )
        if figures is not None:
            figures.mkdir(parents=True, exist_ok=True)
            figure_one(
                figures / f"figure1_{row.name}.png",
                case.mr,
                case.ct_on_mr,
                {"U-Net": unet.sct, "classical": classical.sct},
                title=f"{row.name} ({row.description}): U-Net {row.unet.mae_hu:.0f} HU, "
                f"classical {row.classical.mae_hu:.0f} HU - NOT FOR CLINICAL USE",
            )
        logger.info(
            "%s (%s): U-Net %.1f HU, classical %.1f HU",
            row.name,
            row.description,
            row.unet.mae_hu,
            row.classical.mae_hu,
        )
        rows.append(row)
    spread = calibrate(spreads, errors, threshold_hu=threshold)
    return CohortQuality(
        family=family,
        input_size=model.manifest.input_size,
        rows=rows,
        spread=spread,
        seconds=time.perf_counter() - started,
    )


def write_quality(result: CohortQuality, out: Path) -> list[Path]:
    """``quality.json`` (every figure) and ``quality.md`` (the table) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "family": result.family,
        "input_size": result.input_size,
        "ratio": round(result.ratio, 4),
        "spread": result.spread.as_dict(),
        "seconds": round(result.seconds, 1),
        "patients": [
            {
                "name": r.name,
                "case": r.description,
                "unet": {k: round(v, 3) for k, v in vars(r.unet).items()},
                "classical": {k: round(v, 3) for k, v in vars(r.classical).items()},
                "perfect": {k: round(v, 3) for k, v in vars(r.perfect).items()},
            }
            for r in result.rows
        ],
    }
    json_path, md_path = out / "quality.json", out / "quality.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path.write_text(result.table() + "\n", encoding="utf-8")
    return [json_path, md_path]
