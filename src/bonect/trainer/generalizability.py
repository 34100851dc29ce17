"""``augment`` and ``evaluate``: the paper's generalizability experiment, then train and promote.

``augment --site local`` harvests local pairs from the catalog, registers them, caches slices,
then runs on the local patients: the current model; a model trained on the external sites only;
local-only cross-validation; external + local cross-validation (local patients held out, the
external data always in training). It trains the final model on external + local, publishes it
with its report, and promotes it only if it beats the current model on local patients the
current model never saw. The run folder is named after its inputs, so an interrupted run resumes
where it stopped (finished folds are not trained again; a fold in progress resumes from its
checkpoint).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from bonect.audit import audit_trail
from bonect.config import Config, TrainerConfig
from bonect.converter.inference import pick_device, set_threads
from bonect.converter.model_folder import load_model
from bonect.converter.pipeline import Classical, Method, method_identity
from bonect.registry import promote, promoted_model
from bonect.trainer.evaluate import Evaluation, EvaluationError, Experiment, score_method
from bonect.trainer.pairs import PairState, PairStatus, register_pairs
from bonect.trainer.registry import publish
from bonect.trainer.report import patient_figures, write_report
from bonect.trainer.sites import LOCAL_SITE, SiteError, SiteStore, read_json, write_json
from bonect.trainer.training import TrainingOptions, manifest_for, train

logger = logging.getLogger(__name__)

Say = Callable[[str], None]


def training_options(
    config: TrainerConfig,
    *,
    max_epochs: int | None = None,
    local_sites: Sequence[str] = (),
    processes: int = 1,
) -> TrainingOptions:
    """The training options the config asks for (``--epochs`` caps the epochs); the pairs of
    `local_sites` are local and may be balanced against the external ones; every training runs
    on `processes` processes (``--nproc``)."""
    return TrainingOptions(
        architecture=config.architecture,
        loss=config.loss,
        batch_size=config.batch_size,
        crop_size=config.crop_size or None,
        max_epochs=max_epochs or config.max_epochs,
        patience=config.patience,
        steps_per_epoch=config.steps_per_epoch or None,
        seed=config.seed,
        device=config.device,
        local_sites=tuple(local_sites),
        balance_sites=config.balance_sites,
        processes=processes,
        contrast_remap=config.contrast_remap,
        context_slices=config.context_slices,
    )


@dataclass(frozen=True)
class SitePairs:
    """The registered pairs of some sites, and those left out (with the reason)."""

    states: list[PairState]

    @property
    def usable(self) -> list[PairState]:
        return [s for s in self.states if s.status is PairStatus.USABLE]

    @property
    def left_out(self) -> list[PairState]:
        return [s for s in self.states if s.status is not PairStatus.USABLE]


def registered_pairs(
    store: SiteStore, sites: Sequence[str], threshold: float, *, progress: bool = True
) -> SitePairs:
    """Register every pair of the sites that needs it (unknown site names fail first)."""
    for name in sites:
        store.site(name)
    pairs = list(store.all_pairs(sites))
    return SitePairs(register_pairs(pairs, threshold, progress=progress))


def run_folder(
    root: Path, kind: str, states: Sequence[PairState], options: TrainingOptions, size: int
) -> Path:
    """The run folder of an experiment, named after its inputs (so a rerun resumes in it, also
    on another number of processes: they train the same)."""
    digest = hashlib.sha256()
    for s in sorted(states, key=lambda s: s.pair.key):
        digest.update(f"{s.pair.key}:{s.score}".encode())
    digest.update(repr((replace(options, processes=1), size)).encode())
    return root / "runs" / f"{kind}-{digest.hexdigest()[:12]}"


def current_method(config: Config) -> tuple[Method, frozenset[str]]:
    """The promoted model (or the classical map) and the patient keys it was trained on."""
    folder = promoted_model(config.model_registry)
    if folder is None:
        return Classical(), frozenset()
    model = load_model(
        folder, device=pick_device(config.trainer.device), precision=config.converter.precision
    )
    return model, frozenset(model.manifest.training.patient_keys)


@dataclass(frozen=True)
class AugmentResult:
    exit_code: int
    report: Path | None = None
    version: str | None = None
    promoted: bool = False
    reason: str = ""


def augment(
    config: Config,
    *,
    site: str = LOCAL_SITE,
    external: Sequence[str] = (),
    harvest: Callable[[], list[str]] | None = None,
    max_epochs: int | None = None,
    image_size: int | None = None,
    processes: int = 1,
    progress: bool = True,
    say: Say = print,
) -> AugmentResult:
    """The whole of ``bonect-trainer augment``; `harvest` refreshes the local site first."""
    tc = config.trainer
    set_threads(tc.threads)
    store = SiteStore(config.trainer_dir)
    external = tuple(external or tc.external_sites)
    if site in external:
        raise EvaluationError(f"site {site!r} cannot be both the local and an external site")
    if harvest is not None:
        for line in harvest():
            say(line)
    local = registered_pairs(store, [site], tc.registration_threshold, progress=progress)
    ext = registered_pairs(store, external, tc.registration_threshold, progress=progress)
    for s in [*local.left_out, *ext.left_out]:
        say(f"left out {s.pair.key}: {s.status}: {s.reason}")
    current, seen_patients = current_method(config)
    current_name = " ".join(method_identity(current)[:2])
    last = _last_augment(store)
    new = [
        s
        for s in local.usable
        if s.pair.patient_key not in seen_patients and s.pair.key not in last
    ]
    if not new:
        say(f"no new local pairs since {current_name} and the last augment run: nothing to do")
        return AugmentResult(0, reason="no new local pairs")
    local_patients = {s.pair.patient_key for s in local.usable}
    if len(local_patients) < 2:
        say(f"{len(local_patients)} usable local patient(s): at least 2 are needed to evaluate")
        return AugmentResult(0, reason="too few local patients")
    if not ext.usable:
        say("no usable external pairs: add a site with `bonect-trainer import` and --external")
        return AugmentResult(1, reason="no external data")
    say(
        f"{len(new)} new local pair(s); {len(local.usable)} local and {len(ext.usable)} "
        f"external pairs usable; current model: {current_name}"
    )

    size = image_size or tc.image_size
    options = training_options(tc, max_epochs=max_epochs, local_sites=(site,), processes=processes)
    run = run_folder(config.trainer_dir, "augment", [*local.usable, *ext.usable], options, size)
    say(f"run folder: {run}")
    experiment = Experiment(config.trainer_dir / "cache", size, options, progress=progress)
    device = pick_device(tc.device)
    rows = [
        Evaluation(
            f"current: {current_name}",
            tuple(
                score_method(current, local.usable, run / "current" / "predictions", device=device)
            ),
        ),
        Evaluation(
            "external only",
            tuple(experiment.train_and_score(ext.usable, local.usable, run / "external-only")),
            1,
        ),
        experiment.cross_validate(
            "local only (CV)",
            local.usable,
            [],
            run / "local-only",
            folds=tc.folds,
            repeats=tc.repeats,
        ),
        experiment.cross_validate(
            "external + local (CV)",
            local.usable,
            ext.usable,
            run / "external-local",
            folds=tc.folds,
            repeats=tc.repeats,
        ),
    ]
    unseen = {s.pair.key for s in local.usable if s.pair.patient_key not in seen_patients}
    candidate, baseline = rows[3].restricted(unseen), rows[0].restricted(unseen)
    better = candidate.mean().mae < baseline.mean().mae
    reason = (
        f"external + local: MAE {candidate.mean().mae:.1f} HU vs {current_name}: "
        f"{baseline.mean().mae:.1f} HU on {len(unseen)} local pair(s) the current model never "
        f"saw; {'promoted' if better else 'not promoted: it is not better'}"
    )

    say("training the final model on external + local")
    final = train(
        experiment.cached([*ext.usable, *local.usable]), options, run / "final", progress=progress
    )
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    name = f"bonect-{options.architecture.replace('_', '-')}-{stamp}"
    manifest = manifest_for(
        final,
        options,
        name=name,
        version=stamp,
        size=size,
        sites=[*external, site],
        command=" ".join(["bonect-trainer", *sys.argv[1:]]),
    )
    metrics = {f"local_cv_{k}": round(v, 4) for k, v in rows[3].mean().as_dict().items()}
    manifest = manifest.model_copy(update={"metrics": {**manifest.metrics, **metrics}})
    states = {s.pair.key: s for s in local.usable}
    figures = patient_figures(run, rows[3], rows[:3], states)
    report = write_report(
        run,
        f"bonect-trainer augment: {site} + {', '.join(external)}",
        rows,
        intro=[
            f"Run {datetime.now(UTC).isoformat(timespec='seconds')}; model input {size}², "
            f"{options.architecture}, loss {options.loss}, {tc.folds}-fold CV x {tc.repeats}.",
            f"Local pairs: {len(local.usable)} usable of {len(local.states)}; external pairs: "
            f"{len(ext.usable)} usable of {len(ext.states)}. Every row is tested on the local "
            "patients; CV rows on patients held out of their training.",
        ],
        figures=figures,
        decision=reason,
        extra={"version": name, "new_pairs": sorted(s.pair.key for s in new)},
    )
    registry = config.model_registry
    registry.mkdir(parents=True, exist_ok=True)
    folder = publish(registry, name, manifest, final.network)
    for path in [report, report.with_suffix(".json"), *figures, final.run_dir / "loss_curve.png"]:
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    if better:
        promote(registry, name, reason=reason, audit=audit_trail(config, process="trainer"))
    _remember(store, [s.pair.key for s in local.usable])
    say(reason)
    say(f"report: {report}")
    return AugmentResult(0, report, name, better, reason)


def evaluate(
    config: Config,
    *,
    site: str,
    external: Sequence[str] = (),
    max_epochs: int | None = None,
    image_size: int | None = None,
    processes: int = 1,
    folds: int | None = None,
    repeats: int | None = None,
    progress: bool = True,
    say: Say = print,
) -> Path:
    """Patient-level k-fold CV on `site` (external sites added to every training set)."""
    tc = config.trainer
    set_threads(tc.threads)
    store = SiteStore(config.trainer_dir)
    test = registered_pairs(store, [site], tc.registration_threshold, progress=progress)
    ext = registered_pairs(store, external, tc.registration_threshold, progress=progress)
    size = image_size or tc.image_size
    options = training_options(tc, max_epochs=max_epochs, local_sites=(site,), processes=processes)
    experiment = Experiment(config.trainer_dir / "cache", size, options, progress=progress)
    run = run_folder(config.trainer_dir, "evaluate", [*test.usable, *ext.usable], options, size)
    k, r = folds or tc.folds, repeats or tc.repeats
    label = f"{site}{' + ' + ', '.join(external) if external else ''} ({k}-fold CV x {r})"
    row = experiment.cross_validate(label, test.usable, ext.usable, run, folds=k, repeats=r)
    states = {s.pair.key: s for s in test.usable}
    figures = patient_figures(run, row, [], states)
    report = write_report(
        run,
        f"bonect-trainer evaluate: {site}",
        [row],
        figures=figures,
        intro=[f"{len(test.usable)} usable pairs of {len(test.states)}; input {size}²."],
    )
    say(f"report: {report}")
    return report


_STATE = "augment-state.json"


def _last_augment(store: SiteStore) -> set[str]:
    try:
        return set(read_json(store.root / _STATE).get("local_pairs", []))
    except SiteError:  # missing or damaged: nothing seen yet
        return set()


def _remember(store: SiteStore, pair_keys: Sequence[str]) -> None:
    write_json(store.root / _STATE, {"local_pairs": sorted(pair_keys)})
