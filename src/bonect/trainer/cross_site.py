"""``evaluate --test-site``: train on one site, test on every patient of another.

Cross-validation tells how a recipe does on more patients *like* the training ones; a second
site tells whether it generalises to other scanners, techniques and patients. The U-Net is
trained on the training site's patients plus any external sites (some patients held out for
early stopping, as in every training; the training site's slices balanced against the external
ones when ``balance_sites`` is on) and then converts
every usable pair of the test site, as does the training-free classical map, the baseline
every model must beat. The per-patient table, the means and the ratio of the two MAEs are
printed and written to the run's report.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bonect.config import Config
from bonect.converter.inference import pick_device, set_threads
from bonect.converter.pipeline import Classical
from bonect.trainer.evaluate import Evaluation, EvaluationError, Experiment, score_method
from bonect.trainer.generalizability import Say, registered_pairs, run_folder, training_options
from bonect.trainer.report import patient_figures, patient_table, write_report
from bonect.trainer.sites import SiteStore

logger = logging.getLogger(__name__)


def mae_ratio(model: Evaluation, baseline: Evaluation) -> float:
    """The model's mean MAE over the baseline's (below 1: the model is better)."""
    return model.mean().mae / baseline.mean().mae


def evaluate_across(
    config: Config,
    *,
    site: str,
    test_site: str,
    external: Sequence[str] = (),
    max_epochs: int | None = None,
    image_size: int | None = None,
    processes: int = 1,
    progress: bool = True,
    say: Say = print,
) -> Path:
    """Train on `site` (+ `external`), score the U-Net and the classical map on `test_site`.

    Returns the report (``report.md`` in the run folder).

    Raises
    ------
    EvaluationError
        When the test site is also a training site, or either side has no usable pair.
    """
    if test_site == site or test_site in external:
        raise EvaluationError(f"the test site {test_site!r} must not be a training site")
    tc = config.trainer
    set_threads(tc.threads)
    store = SiteStore(config.trainer_dir)
    trained = registered_pairs(
        store, [site, *external], tc.registration_threshold, progress=progress
    )
    test = registered_pairs(store, [test_site], tc.registration_threshold, progress=progress)
    for s in [*trained.left_out, *test.left_out]:
        say(f"left out {s.pair.key}: {s.status}: {s.reason}")
    if not test.usable:
        raise EvaluationError(f"site {test_site!r} has no usable pair to test on")
    if not any(s.pair.site == site for s in trained.usable):
        raise EvaluationError(f"site {site!r} has no usable pair to train on")
    size = image_size or tc.image_size
    options = training_options(tc, max_epochs=max_epochs, local_sites=(site,), processes=processes)
    experiment = Experiment(config.trainer_dir / "cache", size, options, progress=progress)
    run = run_folder(
        config.trainer_dir, "cross-site", [*trained.usable, *test.usable], options, size
    )
    say(f"run folder: {run}")
    label = f"U-Net ({' + '.join([site, *external])})"
    unet = Evaluation(
        label, tuple(experiment.train_and_score(trained.usable, test.usable, run / "unet")), 1
    )
    classical = Evaluation(
        "classical map",
        tuple(
            score_method(
                Classical(),
                test.usable,
                run / "classical" / "predictions",
                device=pick_device(tc.device),
            )
        ),
    )
    rows = [unet, classical]
    ratio = mae_ratio(unet, classical)
    verdict = (
        f"U-Net MAE / classical MAE on {len(test.usable)} pair(s) of {test_site}: {ratio:.2f} "
        f"({unet.mean().mae:.1f} HU vs {classical.mean().mae:.1f} HU; below 1: the U-Net is better)"
    )
    table = patient_table(rows)
    say(table.rstrip("\n"))
    say(verdict)
    states = {s.pair.key: s for s in test.usable}
    trained_on = ", ".join([site, *external])
    report = write_report(
        run,
        f"bonect-trainer evaluate: trained on {trained_on}, tested on {test_site}",
        rows,
        intro=[
            f"{len(trained.usable)} training pairs (validation patients among them held out "
            f"for early stopping), {len(test.usable)} test pairs of {len(test.states)}; input "
            f"{size}², {options.architecture}, loss {options.loss}.",
            "",
            "## Every test pair",
            "",
            table,
            verdict,
        ],
        figures=patient_figures(run, unet, [classical], states),
        extra={"mae_ratio": ratio, "train_sites": [site, *external], "test_site": test_site},
    )
    say(f"report: {report}")
    return report
