"""The demo: phantom patients → sCT by the U-Net and the classical map → figures, metrics."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from bonect.converter.file_conversion import convert_path
from bonect.converter.model_folder import load_model
from bonect.converter.pipeline import Classical, Method
from bonect.figures import figure_one
from bonect.metrics_report import Metrics, compute_metrics, format_table
from bonect.phantom.cohort import write_patient
from bonect.phantom.generate import Acquisition, generate_case

logger = logging.getLogger(__name__)

DEMO_SEED = 19  # the demo model was trained on cohort 2024: these patients are held out;
# cohort 19 alternates adults and children (patients 1, 3, 5 adults; 2, 4, 6 children)
DEMO_ACQUISITIONS = (
    Acquisition("axial", (2.0, 1.5, 1.5)),
    Acquisition("sagittal", (1.6, 1.5, 1.5)),
)


def bundled_model() -> Path:
    """The phantom-trained Light_U-Net shipped inside the package (not for clinical use)."""
    return Path(str(resources.files("bonect") / "models" / "phantom-light-unet"))


@dataclass(frozen=True)
class DemoResult:
    out: Path
    table: str
    figures: list[Path]
    metrics: dict[str, dict[str, Metrics]]
    seconds: float


def run_demo(
    out: Path,
    *,
    model_folder: Path | None = None,
    device: torch.device | None = None,
    patients: int = 2,
    progress: bool = True,
) -> DemoResult:
    """Make `patients` phantom patients, convert them with both methods, compare with the CT."""
    started = time.perf_counter()
    device = device or torch.device("cpu")
    methods: dict[str, Method] = {
        "U-Net": load_model(model_folder or bundled_model(), device=device),
        "classical": Classical(),
    }
    per_patient: dict[str, dict[str, Metrics]] = {}
    pooled: dict[str, list[Metrics]] = {name: [] for name in methods}
    figures = []
    for index in range(patients):
        acquisition = DEMO_ACQUISITIONS[index % len(DEMO_ACQUISITIONS)]
        logger.info("phantom patient %d: %s bone MR", index + 1, acquisition.orientation)
        case = generate_case(DEMO_SEED, index, acquisition=acquisition, ct_acquisition=None)
        written = write_patient(case, DEMO_SEED, out / "phantom")
        body = case.labels.array > 0
        predictions = {}
        pid = written.folder.name
        per_patient[pid] = {}
        for name, method in methods.items():
            converted = convert_path(
                written.mr_dicom,
                out / "sct" / pid / name.lower().replace("-", ""),
                method,
                device=device,
                progress=progress,
            )
            logger.info("%s: %s in %.1f s", pid, name, converted.seconds)
            sct = converted.conversion.sct
            predictions[name] = sct
            metrics = compute_metrics(sct.array, case.ct_on_mr.array, mask=body, body_mask=body)
            per_patient[pid][name] = metrics
            pooled[name].append(metrics)
        figures.append(
            figure_one(
                out / f"figure1_{pid}.png",
                case.mr,
                case.ct_on_mr,
                predictions,
                title=f"{pid} ({acquisition.orientation} {case.contrast.upper()}, "
                f"{'child' if case.params.paediatric else 'adult'}): phantom-trained U-Net "
                "vs classical map - NOT FOR CLINICAL USE",
            )
        )
    means = {name: _mean(ms) for name, ms in pooled.items()}
    table = format_table(means)
    report = {
        "patients": {
            pid: {n: m.as_dict() for n, m in ms.items()} for pid, ms in per_patient.items()
        },
        "mean": {name: m.as_dict() for name, m in means.items()},
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "metrics.md").write_text(table + "\n", encoding="utf-8")
    return DemoResult(
        out=out,
        table=table,
        figures=figures,
        metrics=per_patient,
        seconds=time.perf_counter() - started,
    )


def _mean(metrics: list[Metrics]) -> Metrics:
    fields = metrics[0].as_dict().keys()
    values = {f: float(np.mean([m.as_dict()[f] for m in metrics])) for f in fields}
    return Metrics(**values)
