"""Converting files on disk: a DICOM folder or NIfTI file in, a CT series or NIfTI file out."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bonect.converter.dicom_writer import write_synthetic_ct
from bonect.converter.pipeline import ALL_PLANES, Conversion, Method, convert, method_identity
from bonect.converter.series import ImageSeries
from bonect.converter.user_input import is_nifti, read_input
from bonect.converter.volume import Volume, write_nifti
from bonect.errors import BonectError

logger = logging.getLogger(__name__)
OutputFormat = Literal["dicom", "nifti"]


@dataclass(frozen=True)
class ConvertedFiles:
    """What a conversion wrote, and how long it took."""

    paths: list[Path]
    conversion: Conversion
    seconds: float


def convert_path(
    source: Path,
    out: Path,
    method: Method,
    *,
    output_format: OutputFormat = "dicom",
    planes: Sequence[str] = ALL_PLANES,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> ConvertedFiles:
    """Read `source`, convert it with `method`, write the synthetic CT under `out`."""
    volume, series = read_input(source)
    return convert_input(
        volume,
        series,
        out,
        method,
        source=source,
        output_format=output_format,
        planes=planes,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )


def convert_input(
    volume: Volume,
    series: ImageSeries | None,
    out: Path,
    method: Method,
    *,
    source: Path,
    output_format: OutputFormat = "dicom",
    planes: Sequence[str] = ALL_PLANES,
    batch_size: int = 16,
    device: torch.device | None = None,
    progress: bool = False,
) -> ConvertedFiles:
    """Convert an input already read (see :func:`bonect.converter.user_input.read_input`)."""
    if output_format == "dicom" and series is None:
        raise BonectError(
            f"{source}: DICOM output needs a DICOM input (for NIfTI input use --format nifti)"
        )
    started = time.perf_counter()
    conversion = convert(
        volume,
        method,
        planes=planes,
        batch_size=batch_size,
        device=device,
        progress=progress,
        uncertainty=output_format == "nifti",  # DICOM output does not carry it
    )
    name, version, clinical = method_identity(method)
    if output_format == "dicom":
        if series is None:  # refused above; this narrows the type
            raise BonectError(f"{source}: DICOM output needs a DICOM input")
        written = write_synthetic_ct(
            conversion.sct.array,
            series,
            out,
            model_name=name,
            model_version=version,
            method="classical" if name == "classical" else "U-Net",
            clinical_use=clinical,
        )
        paths = list(written.paths)
    else:
        target = out if is_nifti(out) else out / "sct.nii.gz"
        sct = conversion.sct.with_array(np.rint(conversion.sct.array).astype(np.int16))
        paths = [write_nifti(sct, target)]
        if conversion.uncertainty is not None:
            spread_path = target.with_name(target.name.replace(".nii", "_uncertainty.nii"))
            paths.append(write_nifti(conversion.uncertainty, spread_path))
    seconds = time.perf_counter() - started
    return ConvertedFiles(paths=paths, conversion=conversion, seconds=seconds)
