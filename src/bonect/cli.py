"""The ``bonect`` command: convert files, write phantom patients, run the demo.

Thin argparse adapters over typed functions; errors become one line and an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from bonect import __version__
from bonect.cli_boundary import positive_int, run, spacing_arg
from bonect.config import Precision

logger = logging.getLogger("bonect")


def add_precision_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--precision",
        choices=get_args(Precision),
        default="auto",
        help="the U-Net's arithmetic (default auto: float16 on CUDA, bfloat16 on a CPU that has "
        "it natively, else float32)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bonect",
        description="Synthetic CT from head-and-neck bone MR (ZTE, UTE, PETRA, black-bone GRE).",
    )
    parser.add_argument("--version", action="version", version=f"bonect {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="debug logging and tracebacks"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    convert = sub.add_parser(
        "convert",
        help="convert one MR series (DICOM folder or NIfTI file) to synthetic CT",
        description="Convert one bone-MR series to synthetic CT, written as a CT Image Storage "
        "series (DICOM) or a NIfTI file.",
    )
    convert.add_argument(
        "input",
        type=Path,
        metavar="IN",
        help="folder of one DICOM MR series, or a .nii/.nii.gz file",
    )
    convert.add_argument(
        "output", type=Path, metavar="OUT", help="folder for the CT series, or a .nii.gz path"
    )
    convert.add_argument(
        "--model",
        default="auto",
        help="auto (the promoted model in the registry, else classical), classical, or a model "
        "folder (default: auto)",
    )
    convert.add_argument(
        "--format", choices=("dicom", "nifti"), default="dicom", dest="output_format"
    )
    convert.add_argument(
        "--planes",
        nargs="+",
        choices=("axial", "coronal", "sagittal"),
        default=["axial", "coronal", "sagittal"],
        help="planes to predict in and fuse by median (default: all three)",
    )
    convert.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    add_precision_option(convert)
    convert.add_argument("--batch-size", type=positive_int, default=16)
    convert.add_argument(
        "--threads",
        type=int,
        default=0,
        help="PyTorch CPU threads (default 0: one per core; on a busy host fewer can be faster)",
    )
    convert.add_argument(
        "--config", type=Path, default=None, help="config.toml (for the model registry)"
    )
    convert.set_defaults(handler=_convert)

    phantom = sub.add_parser(
        "phantom",
        help="write digital phantom patients (bone MR + CT, DICOM and NIfTI)",
        description="Write paired bone-MR and CT series of digital head-and-neck phantom "
        "patients: OUT/<patient>/dicom/{MR,CT}/ and mr.nii.gz, ct.nii.gz (CT on the MR grid), "
        "mask.nii.gz.",
    )
    phantom.add_argument("output", type=Path, metavar="OUT")
    phantom.add_argument("--patients", type=positive_int, default=1)
    phantom.add_argument("--seed", type=int, default=0)
    phantom.add_argument(
        "--family",
        choices=("classic", "wide", "randomised", "shifted"),
        default="classic",
        help="classic: one template, fixed contrasts; wide: scanners, anatomy, pathology and "
        "acquisitions randomised; randomised: wide, half the patients in a random contrast; "
        "shifted: ranges disjoint from wide "
        "(src/bonect/phantom/README.md)",
    )
    phantom.add_argument(
        "--contrast",
        choices=("zte", "ute", "gre", "petra"),
        default=None,
        help="classic: zte (default), ute or gre; other families: drawn unless given",
    )
    phantom.add_argument(
        "--orientation",
        choices=("axial", "sagittal", "coronal"),
        default=None,
        help="classic: axial (default); other families: drawn unless given",
    )
    phantom.add_argument(
        "--spacing",
        type=spacing_arg,
        default=None,
        metavar="S,R,C",
        help="MR voxel size in mm: slice, row, column (classic default: 2.0,1.5,1.5; other "
        "families: drawn unless given)",
    )
    phantom.add_argument(
        "--ct-spacing",
        type=spacing_arg,
        default=(1.5, 1.0, 1.0),
        metavar="S,R,C",
        help="CT voxel size in mm, axial: slice, row, column (default: 1.5,1.0,1.0)",
    )
    phantom.set_defaults(handler=_phantom)

    demo = sub.add_parser(
        "demo",
        help="phantom -> synthetic CT (U-Net and classical) -> figures and metrics",
        description="Make phantom patients, convert them with the bundled phantom-trained "
        "U-Net and with the classical map, and compare both with the CT: a Figure-1 montage "
        "per patient and the paper's metrics.",
    )
    demo.add_argument(
        "--out", type=Path, default=Path("demo-output"), help="default: ./demo-output"
    )
    demo.add_argument(
        "--model", type=Path, default=None, help="model folder (default: the bundled phantom model)"
    )
    demo.add_argument("--patients", type=positive_int, default=2)
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    demo.set_defaults(handler=_demo)

    quality = sub.add_parser(
        "quality",
        help="U-Net vs classical map on a phantom family, per patient (MAE, bias, bone Dice)",
        description="Render phantom patients of one family (shifted: ranges the bundled model "
        "never trained on), convert each with the U-Net and the classical map, and score both "
        "against the CT inside the body; the spread between the U-Net's planes is scored as a "
        "detector of voxels wrong by more than 200 HU. Writes quality.json, quality.md and a "
        "Figure-1 picture per patient.",
    )
    quality.add_argument(
        "--family", choices=("classic", "wide", "randomised", "shifted"), default="shifted"
    )
    quality.add_argument("--patients", type=positive_int, default=8)
    add_precision_option(quality)
    quality.add_argument("--seed", type=int, default=4242, help="cohort seed (4242)")
    quality.add_argument(
        "--model", type=Path, default=None, help="model folder (default: the bundled model)"
    )
    quality.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    quality.add_argument(
        "--out", type=Path, default=Path("quality-output"), help="default: ./quality-output"
    )
    quality.set_defaults(handler=_quality)
    return parser


def _quality(args: argparse.Namespace) -> int:
    from bonect.cohort_quality import evaluate_cohort, write_quality
    from bonect.converter.inference import pick_device
    from bonect.converter.model_folder import load_model
    from bonect.demo import bundled_model

    model = load_model(
        args.model or bundled_model(), device=pick_device(args.device), precision=args.precision
    )
    result = evaluate_cohort(
        model,
        args.family,
        patients=args.patients,
        seed=args.seed,
        figures=args.out,
        progress=sys.stderr.isatty(),
    )
    write_quality(result, args.out)
    print(result.table())
    return 0


def _convert(args: argparse.Namespace) -> int:
    from bonect.config import find_config, load_config
    from bonect.converter.user_input import read_input

    registry = None
    config_path = find_config(args.config)
    if config_path is not None:
        registry = load_config(config_path).model_registry
    volume, series = read_input(args.input)  # refuse a bad input before loading PyTorch

    from bonect.converter.file_conversion import convert_input
    from bonect.converter.inference import pick_device, set_threads
    from bonect.converter.pipeline import resolve_method

    set_threads(args.threads)
    device = pick_device(args.device)
    method = resolve_method(args.model, registry=registry, device=device, precision=args.precision)
    logger.info("converting %s with %s on %s", args.input, method.label, device)
    result = convert_input(
        volume,
        series,
        args.output,
        method,
        source=args.input,
        output_format=args.output_format,
        planes=args.planes,
        batch_size=args.batch_size,
        device=device,
        progress=sys.stderr.isatty(),
    )
    logger.info("wrote %d file(s) to %s in %.1f s", len(result.paths), args.output, result.seconds)
    return 0


def _phantom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from bonect.errors import BonectError
    from bonect.phantom.cohort import write_patient
    from bonect.phantom.generate import Acquisition, generate_case

    if args.contrast == "petra" and args.family == "classic":
        raise BonectError("the classic phantom has no PETRA contrast: add --family shifted")
    classic = args.family == "classic"
    acquisition = None
    if classic or args.orientation or args.spacing:
        acquisition = Acquisition(
            args.orientation or "axial", args.spacing or Acquisition().spacing
        )
    ct_acquisition = Acquisition("axial", args.ct_spacing)
    for index in tqdm(range(args.patients), desc="phantom patients", unit="patient"):
        case = generate_case(
            args.seed,
            index,
            contrast=args.contrast or ("zte" if classic else None),
            acquisition=acquisition,
            ct_acquisition=ct_acquisition,
            family=args.family,
        )
        written = write_patient(case, args.seed, args.output)
        logger.info("wrote %s", written.folder)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from bonect.converter.inference import pick_device
    from bonect.demo import run_demo

    result = run_demo(
        args.out,
        model_folder=args.model,
        device=pick_device(args.device),
        patients=args.patients,
        progress=sys.stderr.isatty(),
    )
    print(f"\nMean over {args.patients} held-out phantom patients (head mask):\n")
    print(result.table)
    print()
    for figure in result.figures:
        print(f"figure: {figure}")
    print(f"metrics: {result.out / 'metrics.md'} and metrics.json; took {result.seconds:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from bonect.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return run(args.handler, args)


if __name__ == "__main__":
    sys.exit(main())
