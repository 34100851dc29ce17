"""Evaluation as the paper does it: models trained without a patient, scored on that patient.

A method (the current model, the classical map, or a network just trained) converts each test
pair's MR through the converter's own pipeline; the synthetic CT is scored against the registered
CT inside the MR-derived head mask with :func:`bonect.metrics_report.compute_metrics`.
Cross-validation splits *patients* (not slices) into k folds, repeated with other splits; sites
that are always in the training set (external data) are added to every fold's training set.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from bonect.converter.model_folder import LoadedModel
from bonect.converter.pipeline import Method, convert, method_identity
from bonect.converter.preprocess import head_mask
from bonect.converter.volume import read_nifti, write_nifti
from bonect.errors import BonectError
from bonect.image_metrics import mean_error
from bonect.metrics_report import Metrics, compute_metrics, mean_ci95
from bonect.registry import Manifest
from bonect.trainer.cache import CachedPair, build_cache
from bonect.trainer.pairs import PairState
from bonect.trainer.training import TrainingOptions, TrainingResult, train

logger = logging.getLogger(__name__)

RESULT_FILE = "evaluation.json"


class EvaluationError(BonectError):
    """Too few patients for the requested evaluation, or a split that cannot be made."""


@dataclass(frozen=True)
class PatientResult:
    """One test pair scored by one method in one repeat."""

    pair_key: str
    patient_key: str
    repeat: int
    metrics: Metrics
    prediction: str  # the sCT NIfTI written for the figures and for a person to look at
    mean_error: float = math.nan  # mean signed error sCT - CT (HU, bone window, head mask)


@dataclass(frozen=True)
class Evaluation:
    """A row of the report: a method or an experiment, scored on a set of test patients."""

    label: str
    results: tuple[PatientResult, ...]
    trainings: int = 0

    def mean(self) -> Metrics:
        fields = Metrics.__dataclass_fields__
        values = {f: float(np.mean([getattr(r.metrics, f) for r in self.results])) for f in fields}
        return Metrics(**values)

    def interval(self, field: str) -> tuple[float, float, float]:
        """Mean and 95 % CI of `field`: across repeats when repeated, else across patients."""
        repeats = sorted({r.repeat for r in self.results})
        if len(repeats) > 1:
            per_repeat = [
                float(np.mean([getattr(r.metrics, field) for r in self.results if r.repeat == k]))
                for k in repeats
            ]
            return mean_ci95(per_repeat)
        return mean_ci95([getattr(r.metrics, field) for r in self.results])

    def restricted(self, pair_keys: set[str]) -> Evaluation:
        return replace(self, results=tuple(r for r in self.results if r.pair_key in pair_keys))

    def to_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "trainings": self.trainings,
            "results": [{**asdict(r), "metrics": r.metrics.as_dict()} for r in self.results],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Evaluation:
        raw = data["results"]
        assert isinstance(raw, list)
        results = tuple(
            PatientResult(
                pair_key=r["pair_key"],
                patient_key=r["patient_key"],
                repeat=int(r["repeat"]),
                metrics=Metrics(**r["metrics"]),
                prediction=r["prediction"],
                mean_error=float(r.get("mean_error", math.nan)),
            )
            for r in raw
        )
        return cls(label=str(data["label"]), results=results, trainings=int(str(data["trainings"])))


def score_method(
    method: Method,
    states: Sequence[PairState],
    out: Path,
    *,
    repeat: int = 0,
    planes: Sequence[str] = ("axial", "coronal", "sagittal"),
    device: torch.device | None = None,
    batch_size: int = 16,
) -> list[PatientResult]:
    """Convert each pair's MR with `method`, write the sCT, score it against the registered CT."""
    results = []
    out.mkdir(parents=True, exist_ok=True)
    for state in states:
        mr, ct = read_nifti(state.pair.mr), read_nifti(state.ct_on_mr)
        sct = convert(
            mr, method, planes=planes, batch_size=batch_size, device=device, uncertainty=False
        ).sct
        mask = head_mask(np.asarray(mr.array, dtype=np.float32), mr.spacing)
        metrics = compute_metrics(sct.array, ct.array, mask=mask, body_mask=mask)
        signed = mean_error(sct.array, ct.array, mask=mask)
        path = write_nifti(sct, out / f"{state.pair.site}-{state.pair.case}.nii.gz")
        name = method_identity(method)[0]
        logger.info("%s on %s: MAE %.1f HU", name, state.pair.key, metrics.mae)
        results.append(
            PatientResult(
                state.pair.key, state.pair.patient_key, repeat, metrics, str(path), signed
            )
        )
    return results


def as_method(result: TrainingResult, options: TrainingOptions, size: int) -> LoadedModel:
    """A freshly trained network as a conversion method (an in-memory model, not published)."""
    manifest = Manifest(
        name="candidate",
        version=result.run_dir.name,
        architecture=options.architecture,
        arguments=options.network_arguments,
        input_size=size,
    )
    return LoadedModel(manifest=manifest, network=result.network.eval(), folder=result.run_dir)


def fold_patients(patients: Sequence[str], k: int, seed: int) -> list[list[str]]:
    """Split patients into k folds of nearly equal size, shuffled by `seed`."""
    unique = sorted(set(patients))
    if len(unique) < 2:
        raise EvaluationError(f"cross-validation needs at least 2 patients, got {len(unique)}")
    k = min(k, len(unique))
    order = np.random.default_rng(seed).permutation(len(unique))
    return [[unique[i] for i in order[f::k]] for f in range(k)]


@dataclass(frozen=True)
class Experiment:
    """What every training of an evaluation shares."""

    cache_root: Path
    size: int
    options: TrainingOptions
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    progress: bool = True

    def cached(self, states: Sequence[PairState]) -> list[CachedPair]:
        return build_cache(
            self.cache_root,
            [s.source() for s in states],
            self.size,
            context=self.options.context_slices,
            progress=self.progress,
        )

    def train_and_score(
        self,
        train_states: Sequence[PairState],
        test_states: Sequence[PairState],
        run_dir: Path,
        *,
        repeat: int = 0,
        seed: int | None = None,
    ) -> list[PatientResult]:
        """Train on one set of pairs, score on another; a finished run is not trained again."""
        done = run_dir / RESULT_FILE
        if done.is_file():
            data = json.loads(done.read_text(encoding="utf-8"))
            return list(Evaluation.from_json(data).results)
        overlap = {s.pair.patient_key for s in train_states} & {
            s.pair.patient_key for s in test_states
        }
        if overlap:
            raise EvaluationError(f"{len(overlap)} patient(s) in both training and test sets")
        options = self.options if seed is None else replace(self.options, seed=seed)
        result = train(self.cached(train_states), options, run_dir, progress=self.progress)
        method = as_method(result, options, self.size)
        results = score_method(
            method,
            test_states,
            run_dir / "predictions",
            repeat=repeat,
            planes=self.planes,
            device=next(result.network.parameters()).device,
        )
        record = Evaluation(run_dir.name, tuple(results), 1).to_json()
        done.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        return results

    def cross_validate(
        self,
        label: str,
        test_states: Sequence[PairState],
        always_train: Sequence[PairState],
        run_dir: Path,
        *,
        folds: int,
        repeats: int,
    ) -> Evaluation:
        """k-fold CV over the patients of `test_states`, `always_train` added to every fold."""
        results: list[PatientResult] = []
        trainings = 0
        for repeat in range(repeats):
            seed = self.options.seed + 1000 * repeat
            split = fold_patients([s.pair.patient_key for s in test_states], folds, seed)
            for f, held_out in enumerate(split, start=1):
                held = set(held_out)
                test = [s for s in test_states if s.pair.patient_key in held]
                rest = [s for s in test_states if s.pair.patient_key not in held]
                logger.info(
                    "%s: repeat %d fold %d/%d, %d test and %d training pairs",
                    label,
                    repeat + 1,
                    f,
                    len(split),
                    len(test),
                    len(rest) + len(always_train),
                )
                results += self.train_and_score(
                    [*always_train, *rest],
                    test,
                    run_dir / f"repeat{repeat + 1}" / f"fold{f}",
                    repeat=repeat,
                    seed=seed + f,
                )
                trainings += 1
        return Evaluation(label, tuple(results), trainings)
