"""The evaluation report: the paper's table with 95 % intervals, Figure-1 pictures, JSON.

``report.md`` is for people (the table laid out like the paper's, the MAE and bone Dice with
their intervals, the figures of the best and the worst patient, the decision and its reason);
``report.json`` holds every patient's metrics for anyone who wants to compute more.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from bonect.converter.volume import read_nifti
from bonect.figures import figure_one
from bonect.metrics_report import format_table
from bonect.trainer.evaluate import Evaluation, PatientResult
from bonect.trainer.pairs import PairState


def _ci(evaluation: Evaluation, field: str, digits: int) -> str:
    mean, low, high = evaluation.interval(field)
    if math.isnan(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interval_table(rows: Sequence[Evaluation]) -> str:
    """MAE, R and bone Dice with 95 % confidence intervals, and how many tests and trainings."""
    lines = [
        "| method | test pairs | trainings | MAE (HU) [95 % CI] | R [95 % CI] "
        "| bone Dice [95 % CI] |",
        "|---|---|---|---|---|---|",
    ]
    for e in rows:
        lines.append(
            f"| {e.label} | {len(e.results)} | {e.trainings} | {_ci(e, 'mae', 1)} "
            f"| {_ci(e, 'pearson_r', 3)} | {_ci(e, 'bone_dice', 3)} |"
        )
    return "\n".join(lines) + "\n"


_PER_PATIENT = (("MAE (HU)", "mae", 1), ("bone Dice", "bone_dice", 3), ("ME (HU)", "mean_error", 1))


def _value(result: PatientResult, field: str) -> float:
    return result.mean_error if field == "mean_error" else float(getattr(result.metrics, field))


def patient_table(rows: Sequence[Evaluation]) -> str:
    """Every test pair's MAE, bone Dice and mean signed error (ME, sCT - CT) under each row,
    then the means; a pair scored in several repeats shows its mean over them."""
    keys = list(dict.fromkeys(r.pair_key for e in rows for r in e.results))
    header = ["test pair", *(f"{e.label}: {name}" for name, _, _ in _PER_PATIENT for e in rows)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for label, wanted in [*((k, {k}) for k in keys), ("**mean**", set(keys))]:
        cells = [label]
        for _, field, digits in _PER_PATIENT:
            for e in rows:
                values = [_value(r, field) for r in e.results if r.pair_key in wanted]
                cells.append(f"{float(np.mean(values)):.{digits}f}" if values else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def extremes(evaluation: Evaluation) -> tuple[PatientResult, PatientResult]:
    """The best and the worst test pair by MAE."""
    ordered = sorted(evaluation.results, key=lambda r: r.metrics.mae)
    return ordered[0], ordered[-1]


def patient_figures(
    out: Path,
    main: Evaluation,
    others: Sequence[Evaluation],
    states: Mapping[str, PairState],
) -> list[Path]:
    """Figure 1 (MR | CT | sCT | difference) for the best and the worst patient of `main`,
    with the sCT of the other rows for the same patient beside it."""
    paths = []
    for tag, result in zip(("best", "worst"), extremes(main), strict=True):
        state = states[result.pair_key]
        predictions = {main.label: read_nifti(Path(result.prediction))}
        for other in others:
            same = [r for r in other.results if r.pair_key == result.pair_key]
            if same:
                predictions[other.label] = read_nifti(Path(same[0].prediction))
        paths.append(
            figure_one(
                out / f"figure1_{tag}.png",
                read_nifti(state.pair.mr),
                read_nifti(state.ct_on_mr),
                predictions,
                title=f"{tag} patient of '{main.label}' ({result.pair_key}, "
                f"MAE {result.metrics.mae:.1f} HU) - not for clinical use",
            )
        )
    return paths


def write_report(
    out: Path,
    title: str,
    rows: Sequence[Evaluation],
    *,
    intro: Sequence[str] = (),
    figures: Sequence[Path] = (),
    decision: str = "",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """Write ``report.md`` and ``report.json`` into `out`; returns the Markdown file."""
    out.mkdir(parents=True, exist_ok=True)
    table = format_table({e.label: e.mean() for e in rows})
    parts = [f"# {title}", "", *intro, "", "## Means over test patients", "", table]
    parts += ["## With 95 % confidence intervals", "", interval_table(rows)]
    parts += [
        "Intervals are across repeats of the cross-validation when it was repeated, else "
        "across test patients. Metrics: the paper's (MAE, MSE, R and bone scores in the bone "
        "window, inside the MR-derived head mask) and SynthRAD's (MAE unclipped, PSNR, SSIM).",
        "",
    ]
    if decision:
        parts += ["## Decision", "", decision, ""]
    if figures:
        parts += ["## Figures", ""]
        parts += [
            f"![{p.stem}]({p.relative_to(out) if p.is_relative_to(out) else p})" for p in figures
        ]
        parts.append("")
    path = out / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    data = {
        "title": title,
        "rows": [e.to_json() for e in rows],
        "means": {e.label: e.mean().as_dict() for e in rows},
        "decision": decision,
        **(extra or {}),
    }
    (out / "report.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
