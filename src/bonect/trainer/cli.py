"""The ``bonect-trainer`` command: import sites, check pairs, evaluate, augment, promote.

Thin argparse adapters over typed functions; errors become one line and an exit code (78 for
a bad config, 1 for bad input, 70 for a bug). The config is the daemon's (``--config``, then
``$BONECT_CONFIG``, ``./config.toml``, ``/etc/bonect/config.toml``): the trainer works in
``[storage].dir/trainer`` and publishes to the daemon's model registry. (Just over 400
lines: one parser and one thin handler per command.)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

from bonect import __version__
from bonect.audit import audit_trail
from bonect.cli_boundary import positive_int, run, spacing_arg
from bonect.config import Config, find_config, load_config
from bonect.errors import BonectError, ConfigError
from bonect.trainer.sites import SiteStore

PHANTOM_CT_SPACING = (2.0, 2.0, 2.0)
PROG = "bonect-trainer"


def _load(args: argparse.Namespace) -> Config:
    path = find_config(args.config)
    if path is None:
        raise ConfigError(
            "no config file: pass --config, set $BONECT_CONFIG, or create ./config.toml "
            "or /etc/bonect/config.toml"
        )
    return load_config(path)


def _date_arg(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _check_nproc(config: Config, processes: int) -> None:
    """Refuse more CUDA processes than GPUs before any work is done."""
    from bonect.converter.inference import pick_device
    from bonect.trainer.parallel import check_processes

    if processes > 1:  # a missing GPU is a DeviceError, one line like any BonectError
        check_processes(processes, pick_device(config.trainer.device))


def _image_size(text: str) -> int:
    value = positive_int(text)
    if value % 16:
        raise argparse.ArgumentTypeError(f"must be a multiple of 16, got {value}")
    return value


# -- commands --------------------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    from bonect.trainer import importers
    from bonect.trainer.sites import LOCAL_SITE, check_name

    config = _load(args)
    if check_name(args.site) == LOCAL_SITE:
        raise BonectError("the site 'local' is harvested from the catalog; import as another name")
    store = SiteStore(config.trainer_dir)
    store.root.mkdir(parents=True, exist_ok=True)
    if args.format == "phantom":
        summary = importers.import_phantom(
            store,
            args.site,
            patients=args.patients,
            seed=args.seed,
            family=args.family,
            contrast=args.contrast,
            mr_spacing=args.mr_spacing,
            ct_spacing=args.ct_spacing,
        )
    else:
        if args.path is None:
            raise BonectError(f"--format {args.format} needs a PATH to import from")
        if args.format == "synthrad":
            summary = importers.import_synthrad(store, args.site, args.path)
        elif args.format == "nifti":
            summary = importers.import_nifti(store, args.site, args.path)
        else:
            summary = importers.import_dicom(
                store, args.site, args.path, window_days=config.trainer.pair_window_days
            )
    print("\n".join(summary.lines()))
    return 0 if summary.added else 1


def cmd_sites(args: argparse.Namespace) -> int:
    from bonect.trainer.pairs import PairStatus, pair_state

    config = _load(args)
    store = SiteStore(config.trainer_dir)
    sites = store.sites()
    if not sites:
        print("no sites yet: `bonect-trainer import` adds one; `augment` harvests 'local'")
        return 0
    print("| site | format | patients | pairs | usable | set aside | failed | not registered |")
    print("|---|---|---|---|---|---|---|---|")
    for site in sites:
        pairs = store.pairs(site)
        states = [pair_state(p, config.trainer.registration_threshold) for p in pairs]
        count = {status: sum(s.status is status for s in states) for status in PairStatus}
        patients = len({p.patient_key for p in pairs})
        print(
            f"| {site.name} | {site.format} | {patients} | {len(pairs)} "
            f"| {count[PairStatus.USABLE]} | {count[PairStatus.SET_ASIDE]} "
            f"| {count[PairStatus.FAILED]} | {count[PairStatus.PENDING]} |"
        )
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from bonect.trainer.generalizability import registered_pairs
    from bonect.trainer.pairs import format_pairs

    config = _load(args)
    if args.site == "local" and not args.no_harvest:
        print("\n".join(_harvest(config)))
    store_pairs = registered_pairs(
        _store(config), [args.site], config.trainer.registration_threshold, progress=True
    )
    print(format_pairs(store_pairs.states))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from functools import partial

    from bonect.trainer.cross_site import evaluate_across
    from bonect.trainer.generalizability import evaluate

    config = _load(args)
    _check_nproc(config, args.nproc)
    if args.test_site is not None and (args.folds or args.repeats):
        raise BonectError("--folds and --repeats are for cross-validation, not --test-site")
    run_evaluation = (
        partial(evaluate, folds=args.folds, repeats=args.repeats)
        if args.test_site is None
        else partial(evaluate_across, test_site=args.test_site)
    )
    run_evaluation(
        config,
        site=args.site,
        external=args.external,
        max_epochs=args.epochs,
        image_size=args.image_size,
        processes=args.nproc,
    )
    return 0


def cmd_augment(args: argparse.Namespace) -> int:
    from bonect.trainer.generalizability import augment

    config = _load(args)
    _check_nproc(config, args.nproc)
    harvest = None if args.no_harvest or args.site != "local" else (lambda: _harvest(config))
    result = augment(
        config,
        site=args.site,
        external=args.external,
        harvest=harvest,
        max_epochs=args.epochs,
        image_size=args.image_size,
        processes=args.nproc,
    )
    return result.exit_code


def cmd_models(args: argparse.Namespace) -> int:
    from bonect.registry import versions

    config = _load(args)
    found = versions(config.model_registry)
    if not found:
        print(f"no model versions in {config.model_registry}: the daemon uses the classical map")
        return 0
    print("| version | promoted | architecture | input | sites | patients | local CV MAE (HU) |")
    print("|---|---|---|---|---|---|---|")
    for v in found:
        m = v.manifest
        mae = m.metrics.get("local_cv_mae")
        print(
            f"| {v.name} | {'yes' if v.promoted else ''} | {m.architecture} | {m.input_size} "
            f"| {', '.join(m.training.sites)} | {len(m.training.patient_keys)} "
            f"| {'' if mae is None else f'{mae:.1f}'} |"
        )
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from bonect.registry import promote

    config = _load(args)
    promote(
        config.model_registry,
        args.version,
        reason=args.reason or "promoted by hand",
        audit=audit_trail(config, process="trainer"),
    )
    print(f"promoted {args.version}; a running daemon swaps it in after a smoke test")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from bonect.registry import rollback

    config = _load(args)
    previous = rollback(config.model_registry, audit=audit_trail(config, process="trainer"))
    print(f"promoted {previous} again; a running daemon swaps it in after a smoke test")
    return 0


def _store(config: Config) -> SiteStore:
    config.trainer_dir.mkdir(parents=True, exist_ok=True)
    return SiteStore(config.trainer_dir)


def _harvest(config: Config) -> list[str]:
    from bonect.catalog.engine import catalog_url
    from bonect.catalog.queue import Catalog
    from bonect.trainer.harvest import harvest_local

    config.trainer_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.open(catalog_url(config.storage.dir, config.catalog.url))
    try:
        summary = harvest_local(
            catalog,
            SiteStore(config.trainer_dir),
            window_days=config.trainer.pair_window_days,
            output_manufacturer=config.rules.output_manufacturer,
        )
    finally:
        catalog.close()
    return summary.lines()


def cmd_harvest(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from bonect.catalog.engine import catalog_url
    from bonect.catalog.queue import Catalog
    from bonect.dicom.query_retrieve import QueryRetrieveClient
    from bonect.trainer.backfill import case_lines, find_cases, retrieve_cases

    config = _load(args)
    source = next((s for s in config.sources if s.name == args.source), None)
    if source is None:
        known = ", ".join(s.name for s in config.sources) or "none configured"
        raise BonectError(f"no [[sources]] entry named {args.source!r} ({known})")
    until = args.until or datetime.now().date()
    if until < args.since:
        raise BonectError(f"--until {until} is before --since {args.since}")
    client = QueryRetrieveClient(source, calling_ae=config.node.ae_title)
    cases = find_cases(client, config, since=args.since, until=until)
    print("\n".join(case_lines(cases)))
    if args.dry_run:
        return 0
    catalog = Catalog.open(catalog_url(config.storage.dir, config.catalog.url))
    try:
        asked, skipped = retrieve_cases(
            catalog,
            client,
            source,
            cases,
            move_ae=source.move_destination_ae or config.node.ae_title,
            now=lambda: datetime.now(UTC),
        )
    finally:
        catalog.close()
    print(
        f"asked {source.name} for {asked} bone-MR series ({skipped} already in the archive); "
        "the daemon retrieves their CTs as they settle (bonect-daemon priors)"
    )
    return 0


# -- parser ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train, evaluate and promote bonect's synthetic-CT model on local data "
        "added to external data (Bambach & Ho, AJNR 2022).",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--config", type=Path, help="config file (default: as the daemon)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    imp = sub.add_parser("import", help="add an external site of MR/CT pairs")
    imp.add_argument("--site", required=True, help="site name (letters, digits, . _ -)")
    imp.add_argument(
        "--format",
        required=True,
        choices=("synthrad", "nifti", "dicom", "phantom"),
        help="synthrad: <case>/mr.nii.gz + ct.nii.gz; nifti: <case>_mr.nii.gz + <case>_ct.nii.gz;"
        " dicom: MR and CT series of the same patients; phantom: rendered phantom patients",
    )
    imp.add_argument("path", type=Path, nargs="?", help="folder to import (not for phantom)")
    imp.add_argument("--patients", type=positive_int, default=12, help="phantom: how many (12)")
    imp.add_argument("--seed", type=int, default=7, help="phantom: cohort seed (7)")
    imp.add_argument(
        "--family",
        choices=("classic", "wide", "randomised", "shifted"),
        default="classic",
        help="phantom: classic (the original phantom, ZTE), wide (technique, scanner, anatomy "
        "and acquisition drawn per patient), randomised (wide, half in a random contrast) or "
        "shifted (ranges apart from wide's, PETRA)",
    )
    imp.add_argument(
        "--contrast",
        choices=("zte", "ute", "gre", "petra"),
        help="phantom: the technique (default: classic zte, other families drawn per patient; "
        "petra only in wide and shifted)",
    )
    imp.add_argument(
        "--mr-spacing",
        type=spacing_arg,
        metavar="S,R,C",
        help="phantom: MR voxel size in mm (classic: 2,1.6,1.6; other families draw the "
        "acquisition, plane, voxel size and field of view, and this replaces the voxel size)",
    )
    imp.add_argument(
        "--ct-spacing",
        type=spacing_arg,
        default=PHANTOM_CT_SPACING,
        metavar="S,R,C",
        help="phantom: CT voxel size in mm (2,2,2)",
    )
    imp.set_defaults(handler=cmd_import)

    sites = sub.add_parser("sites", help="list sites with patient and pair counts")
    sites.set_defaults(handler=cmd_sites)

    pairs = sub.add_parser("pairs", help="register a site's pairs; show scores and status")
    pairs.add_argument("--site", required=True)
    pairs.add_argument(
        "--no-harvest",
        action="store_true",
        help="local: do not read new pairs from the catalog first",
    )
    pairs.set_defaults(handler=cmd_pairs)

    harvest = sub.add_parser(
        "harvest",
        help="back-fill: find bone MR already in a PACS and their CTs; retrieve them",
        description="Ask a [[sources]] PACS for the bone-MR series of a date range (C-FIND, "
        "matched by the [rules]) and each patient's CT in the pairing window; print the "
        "pairable cases; then (without --dry-run) C-MOVE the bone MR to the running daemon, "
        "which retrieves their CTs. Back-filled MR are paired, never converted or sent. "
        "Run it again to resume: what the archive holds whole is not asked again.",
    )
    harvest.add_argument("--source", required=True, help="a [[sources]] name")
    harvest.add_argument("--since", required=True, type=_date_arg, help="YYYY-MM-DD")
    harvest.add_argument("--until", type=_date_arg, help="YYYY-MM-DD (default: today)")
    harvest.add_argument("--dry-run", action="store_true", help="print the cases; move nothing")
    harvest.set_defaults(handler=cmd_harvest)

    def training_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--external",
            nargs="*",
            default=[],
            metavar="SITE",
            help="external sites added to every training set",
        )
        p.add_argument("--epochs", type=positive_int, help="at most this many epochs per training")
        p.add_argument("--image-size", type=_image_size, help="model input size (config)")
        p.add_argument(
            "--nproc",
            type=positive_int,
            default=1,
            metavar="N",
            help="train on N processes, each on its share of every batch (DDP: gloo on the CPU, "
            "one GPU each with NCCL on CUDA); the same batches and results as 1 (default 1)",
        )

    ev = sub.add_parser(
        "evaluate",
        help="patient-level k-fold cross-validation on a site, or train on one and test on another",
        description="Without --test-site: k-fold cross-validation over the patients of --site "
        "(--external sites added to every training set). With --test-site: train once on "
        "--site (+ --external; validation patients held out for early stopping) and score the "
        "U-Net and the classical map on every patient of the test site: a table per patient, "
        "the means and the ratio U-Net MAE / classical MAE.",
    )
    ev.add_argument("--site", required=True, help="the site to cross-validate, or to train on")
    ev.add_argument("--test-site", metavar="SITE", help="test on every patient of this site")
    training_flags(ev)
    ev.add_argument("--folds", type=positive_int, help="k (config: 4)")
    ev.add_argument("--repeats", type=positive_int, help="repeats of the k-fold split (config: 1)")
    ev.set_defaults(handler=cmd_evaluate)

    aug = sub.add_parser(
        "augment",
        help="local + external: evaluate as the paper did, train, publish, promote",
    )
    aug.add_argument("--site", default="local", help="the local site (default: local)")
    training_flags(aug)
    aug.add_argument("--no-harvest", action="store_true", help="do not read the catalog first")
    aug.set_defaults(handler=cmd_augment)

    models = sub.add_parser("models", help="list model versions in the registry")
    models.set_defaults(handler=cmd_models)
    prom = sub.add_parser("promote", help="promote a model version by name")
    prom.add_argument("version")
    prom.add_argument("--reason", default="")
    prom.set_defaults(handler=cmd_promote)
    roll = sub.add_parser("rollback", help="promote again the version promoted before")
    roll.set_defaults(handler=cmd_rollback)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from bonect.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    resume = "interrupted; run the same command again to resume"
    return run(args.handler, args, prog=PROG, interrupted=resume)


if __name__ == "__main__":
    sys.exit(main())
