"""Cross-validation by patient: folds are disjoint, every patient is tested once per repeat,
and an interrupted evaluation resumes without training a finished fold again."""

from __future__ import annotations

from pathlib import Path

import pytest

import bonect.trainer.evaluate as evaluate_module
from bonect.phantom.generate import Acquisition, generate_case
from bonect.trainer.evaluate import EvaluationError, Experiment, fold_patients
from bonect.trainer.pairs import PairState, register_pairs
from bonect.trainer.sites import SiteStore
from bonect.trainer.training import TrainingOptions

COARSE = Acquisition("axial", (5.0, 5.0, 5.0))


def test_folds_split_patients_not_slices() -> None:
    patients = [f"p{i}" for i in range(10)]
    folds = fold_patients(patients + patients[:3], 4, seed=1)  # a patient with 2 pairs: once
    assert len(folds) == 4
    flat = [p for fold in folds for p in fold]
    assert sorted(flat) == sorted(patients)
    assert sorted(len(f) for f in folds) == [2, 2, 3, 3]
    assert fold_patients(patients, 4, seed=1) == folds
    assert fold_patients(patients, 4, seed=2) != folds
    assert len(fold_patients(patients[:3], 4, seed=0)) == 3  # fewer patients than k: one each
    with pytest.raises(EvaluationError, match="at least 2 patients"):
        fold_patients(["only"], 4, seed=0)


@pytest.fixture(scope="module")
def three_states(tmp_path_factory: pytest.TempPathFactory) -> list[PairState]:
    store = SiteStore(tmp_path_factory.mktemp("trainer"))
    site = store.create_site("s", "phantom", "test")
    pairs = []
    for i in range(3):
        case = generate_case(43, i, acquisition=COARSE, ct_acquisition=None)
        pairs.append(
            store.add_pair(
                site, f"c{i}", patient_key=f"k{i}", mr=case.mr, ct=case.ct_on_mr, ct_on_mr_grid=True
            )
        )
    return register_pairs(pairs, 0.0, progress=False)


def test_an_interrupted_cross_validation_trains_only_the_missing_fold(
    tmp_path: Path, three_states: list[PairState], monkeypatch: pytest.MonkeyPatch
) -> None:
    options = TrainingOptions(batch_size=8, max_epochs=1, steps_per_epoch=2, augment=False)
    experiment = Experiment(tmp_path / "cache", 32, options, planes=("axial",), progress=False)
    run = tmp_path / "cv"
    first = experiment.cross_validate("cv", three_states, [], run, folds=3, repeats=1)
    assert first.trainings == 3
    assert sorted(r.pair_key for r in first.results) == ["s/c0", "s/c1", "s/c2"]

    (run / "repeat1" / "fold2" / "evaluation.json").unlink()  # as if stopped during fold 2
    trained: list[Path] = []
    real_train = evaluate_module.train

    def counting_train(*args: object, **kwargs: object) -> object:
        trained.append(Path(str(args[2])))
        return real_train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(evaluate_module, "train", counting_train)
    again = experiment.cross_validate("cv", three_states, [], run, folds=3, repeats=1)
    assert trained == [run / "repeat1" / "fold2"]
    assert [r.pair_key for r in again.results] == [r.pair_key for r in first.results]
    # folds 1 and 3 are read back, not recomputed
    assert [r.metrics.mae for r in again.results] == [r.metrics.mae for r in first.results]
