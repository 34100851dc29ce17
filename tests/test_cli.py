"""Tests of the ``bonect`` console script, run as a user runs it: a subprocess, real files.

Every ``bonect convert`` pays for importing torch (several seconds on a small CI machine), so the
commands of this module are started together in a small thread pool by two module fixtures and
the tests only look at what came back.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import BasicTextSRStorage, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from bonect.phantom.cohort import WrittenPatient
from dicom_validation import dciodvfy_errors

BONECT = Path(sys.executable).parent / "bonect"
WORKERS = 4
SUBCOMMANDS = ("convert", "phantom", "demo", "quality")
CUDA = torch.cuda.is_available()
# A record of bonect.logs.configure_logging ("12:34:56 INFO bonect: ..."); anything else a user
# reads on stderr is the command's own message.
LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d )?(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: ")


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def messages(self) -> list[str]:
        """Non-empty stderr lines that are not log records."""
        lines = (line.strip() for line in self.stderr.splitlines())
        return [line for line in lines if line and not LOG_RECORD.match(line)]

    def __str__(self) -> str:
        return f"bonect {' '.join(self.args)} -> {self.returncode}\n{self.stderr}"


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("BONECT_CONFIG", "JOURNAL_STREAM"):
        env.pop(name, None)
    return env


def bonect(*args: str | Path, cwd: Path) -> Run:
    """Run the installed console script; cwd has no config.toml, so none is found by default."""
    argv = tuple(str(a) for a in args)
    done = subprocess.run(
        [str(BONECT), *argv],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Run(argv, done.returncode, done.stdout, done.stderr)


def run_together(tasks: Mapping[str, Callable[[], Run | list[Run]]]) -> dict[str, Run | list[Run]]:
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {name: pool.submit(task) for name, task in tasks.items()}
        return {name: future.result() for name, future in futures.items()}


def load_nifti(path: Path) -> Any:
    return nib.load(path)


# ---------------------------------------------------------------------------------------------
# inputs


def _sr_dataset() -> Dataset:
    """A small Basic Text SR: valid DICOM, but not an image."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN0001"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    return ds


def _copy_series(source: Path, target: Path) -> list[Path]:
    target.mkdir(parents=True)
    return [Path(shutil.copy2(f, target)) for f in sorted(source.glob("*.dcm"))]


@dataclass(frozen=True)
class Work:
    """The folder the commands run in and the inputs built there."""

    root: Path
    patient: WrittenPatient
    mr: Path  # the phantom's axial MR series, in a folder not named after the patient
    bad: dict[str, tuple[list[str | Path], str]]  # case -> (bonect arguments, expected message)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, phantom_written: WrittenPatient) -> Work:
    root = tmp_path_factory.mktemp("cli")
    assert phantom_written.ct_dicom is not None
    mr = root / "mr_axial"
    mr_files = _copy_series(phantom_written.mr_dicom, mr)

    (root / "empty").mkdir()
    two = root / "two_series"
    _copy_series(phantom_written.mr_dicom, two)
    for f in sorted(phantom_written.ct_dicom.glob("*.dcm")):
        shutil.copy2(f, two)
    truncated = _copy_series(phantom_written.mr_dicom, root / "truncated")[len(mr_files) // 3]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    gaps = _copy_series(phantom_written.mr_dicom, root / "missing_slices")
    for f in gaps[len(gaps) // 2 : len(gaps) // 2 + 2]:
        f.unlink()
    (root / "report").mkdir()
    _sr_dataset().save_as(root / "report" / "sr.dcm", enforce_file_format=True)

    classical = ["--model", "classical", "--device", "cpu"]
    bad: dict[str, tuple[list[str | Path], str]] = {
        "empty folder": (["convert", root / "empty", "out-empty", *classical], "no DICOM files"),
        "two series": (["convert", two, "out-two", *classical], "2 series in input"),
        "CT series": (
            ["convert", phantom_written.ct_dicom, "out-ct", *classical],
            "series is CT, not MR",
        ),
        "truncated file": (
            ["convert", root / "truncated", "out-truncated", *classical],
            f"{truncated.name}: truncated DICOM file",
        ),
        "missing slices": (
            ["convert", root / "missing_slices", "out-gaps", *classical],
            "missing slices",
        ),
        "not an image": (["convert", root / "report", "out-sr", *classical], "not an image"),
        "no such path": (
            ["convert", root / "nowhere", "out-nowhere", *classical],
            "no such file or folder",
        ),
        "no such model": (
            ["convert", mr, "out-model", "--model", root / "no-model", "--device", "cpu"],
            "not 'auto', 'classical' or a model folder",
        ),
        "NIfTI to DICOM": (
            ["convert", phantom_written.mr_nifti, "out-nifti", *classical],
            "DICOM output needs a DICOM input",
        ),
    }
    (root / "bad.toml").write_text('[converter]\ncolour = "red"\n', encoding="utf-8")
    return Work(root=root, patient=phantom_written, mr=mr, bad=bad)


@dataclass(frozen=True)
class Runs:
    """What every command of this module returned, and where the phantom command wrote."""

    all: dict[str, Run | list[Run]]
    phantom_out: Path

    def __getitem__(self, name: str) -> Run:
        run = self.all[name]
        assert isinstance(run, Run)
        return run


@pytest.fixture(scope="module")
def runs(work: Work, tiny_model: Path) -> Runs:
    root = work.root
    phantom_out = root / "phantom"
    sagittal_mr = phantom_out / "PH0000001" / "dicom" / "MR"
    cpu = ("--device", "cpu")
    phantom = (
        "phantom",
        phantom_out,
        "--patients",
        "1",
        "--spacing",
        "4,3,3",
        "--ct-spacing",
        "4,3,3",
    )
    to_nifti = ("convert", work.patient.mr_nifti, "nifti/sct.nii.gz", "--format", "nifti")
    bad_config = ("convert", work.mr, "out-config", "--config", "bad.toml")

    def phantom_then_convert() -> list[Run]:
        made = bonect(*phantom, "--orientation", "sagittal", cwd=root)
        if made.returncode != 0:
            return [made]
        return [
            made,
            bonect("convert", sagittal_mr, "sag-classical", "--model", "classical", *cpu, cwd=root),
            bonect("convert", sagittal_mr, "sag-tiny", "--model", tiny_model, *cpu, cwd=root),
        ]

    tasks: dict[str, Callable[[], Run | list[Run]]] = {"sagittal": phantom_then_convert}
    commands: dict[str, Sequence[str | Path]] = {
        "axial classical": ("convert", work.mr, "ax-classical", "--model", "classical", *cpu),
        "axial tiny": ("convert", work.mr, "ax-tiny", "--model", tiny_model, *cpu),
        "nifti": (*to_nifti, "--model", tiny_model, *cpu),
        "bad config": (*bad_config, "--model", "classical", *cpu),
        **{name: args for name, (args, _) in work.bad.items()},
    }
    for name, args in commands.items():
        tasks[name] = partial(bonect, *args, cwd=root)
    return Runs(all=run_together(tasks), phantom_out=phantom_out)


# ---------------------------------------------------------------------------------------------
# help


@pytest.mark.parametrize(
    "command", [(), *((c,) for c in SUBCOMMANDS)], ids=lambda c: " ".join(c) or "bonect"
)
def test_help_exits_zero(command: tuple[str, ...], tmp_path: Path) -> None:
    run = bonect(*command, "--help", cwd=tmp_path)
    assert run.returncode == 0, run
    assert run.stdout.startswith(f"usage: bonect {' '.join(command)}".rstrip())
    if not command:
        for sub in SUBCOMMANDS:
            assert sub in run.stdout


# ---------------------------------------------------------------------------------------------
# bonect phantom


def test_phantom_writes_a_patient(runs: Runs) -> None:
    made = runs.all["sagittal"]
    assert isinstance(made, list)
    assert made[0].returncode == 0, made[0]
    patient = runs.phantom_out / "PH0000001"
    for name in ("mr.nii.gz", "ct.nii.gz", "mask.nii.gz"):
        assert (patient / name).is_file(), name
    mr_files = sorted((patient / "dicom" / "MR").glob("*.dcm"))
    ct_files = sorted((patient / "dicom" / "CT").glob("*.dcm"))
    assert mr_files and ct_files
    mr = pydicom.dcmread(mr_files[0], stop_before_pixels=True)
    ct = pydicom.dcmread(ct_files[0], stop_before_pixels=True)
    assert (mr.Modality, ct.Modality) == ("MR", "CT")
    assert [float(v) for v in mr.ImageOrientationPatient] == [0, 1, 0, 0, 0, -1]  # sagittal
    assert float(mr.SliceThickness) == 4.0
    assert [float(v) for v in mr.PixelSpacing] == [3.0, 3.0]
    assert mr.PatientID == ct.PatientID == "PH0000001"
    nifti = load_nifti(patient / "mr.nii.gz")
    assert len(mr_files) in nifti.shape


# ---------------------------------------------------------------------------------------------
# bonect convert


def _geometry(datasets: Sequence[Dataset]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted ImagePositionPatient rows, the one ImageOrientationPatient and PixelSpacing."""
    ipp = np.array(sorted(tuple(float(v) for v in d.ImagePositionPatient) for d in datasets))
    iops = {tuple(float(v) for v in d.ImageOrientationPatient) for d in datasets}
    spacings = {tuple(float(v) for v in d.PixelSpacing) for d in datasets}
    assert len(iops) == 1 and len(spacings) == 1
    return ipp, np.array(iops.pop()), np.array(spacings.pop())


def check_synthetic_ct(ct_dir: Path, mr_dir: Path) -> None:
    """Valid CT instances, one per MR slice, on the MR's grid and frame of reference."""
    files = sorted(ct_dir.glob("*.dcm"))
    mr_files = sorted(mr_dir.glob("*.dcm"))
    assert len(files) == len(mr_files)
    errors = {f.name: e for f in files if (e := dciodvfy_errors(f))}
    assert errors == {}

    ct = [pydicom.dcmread(f) for f in files]
    mr = [pydicom.dcmread(f) for f in mr_files]
    assert {d.SOPClassUID for d in ct} == {CTImageStorage}
    assert {d.FrameOfReferenceUID for d in ct} == {mr[0].FrameOfReferenceUID}
    assert {d.StudyInstanceUID for d in ct} == {mr[0].StudyInstanceUID}
    assert len({d.SeriesInstanceUID for d in ct}) == 1
    assert ct[0].SeriesInstanceUID != mr[0].SeriesInstanceUID
    assert "DERIVED" in ct[0].ImageType
    ct_ipp, ct_iop, ct_spacing = _geometry(ct)
    mr_ipp, mr_iop, mr_spacing = _geometry(mr)
    assert len(ct_ipp) == len({tuple(p) for p in ct_ipp})  # one instance per position
    np.testing.assert_allclose(ct_ipp, mr_ipp, atol=1e-3)
    np.testing.assert_allclose(ct_iop, mr_iop, atol=1e-6)
    np.testing.assert_allclose(ct_spacing, mr_spacing, atol=1e-6)

    volume = hd.get_volume_from_series(ct)
    mr_volume = hd.get_volume_from_series(mr)
    assert volume.frame_of_reference_uid == mr[0].FrameOfReferenceUID
    assert volume.spatial_shape == mr_volume.spatial_shape
    # both read the same way by highdicom (which may run the slices backwards): same affine
    np.testing.assert_allclose(volume.affine, mr_volume.affine, atol=1e-3)
    mr_step = np.linalg.norm(mr_ipp[1] - mr_ipp[0])
    assert abs(volume.spacing_between_slices) == pytest.approx(mr_step, abs=1e-3)
    assert volume.array.min() >= -1024 and volume.array.max() <= 3071
    assert volume.array.min() == -1000  # air outside the head


@pytest.mark.parametrize("model", ["classical", "tiny"])
def test_convert_axial_series(runs: Runs, work: Work, model: str) -> None:
    run = runs[f"axial {model}"]
    assert run.returncode == 0, run
    assert "Traceback" not in run.stderr
    check_synthetic_ct(work.root / f"ax-{model}", work.mr)


@pytest.mark.parametrize("model", ["classical", "tiny"])
def test_convert_sagittal_series(runs: Runs, model: str) -> None:
    chain = runs.all["sagittal"]
    assert isinstance(chain, list)
    assert len(chain) == 3, chain[0]  # the phantom command failed
    run = chain[1 if model == "classical" else 2]
    assert run.returncode == 0, run
    mr = runs.phantom_out / "PH0000001" / "dicom" / "MR"
    check_synthetic_ct(runs.phantom_out.parent / f"sag-{model}", mr)


def test_convert_nifti_keeps_the_mr_affine(runs: Runs, work: Work) -> None:
    run = runs["nifti"]
    assert run.returncode == 0, run
    mr = load_nifti(work.patient.mr_nifti)
    sct = load_nifti(work.root / "nifti" / "sct.nii.gz")
    spread = load_nifti(work.root / "nifti" / "sct_uncertainty.nii.gz")
    for image in (sct, spread):
        assert image.shape == mr.shape
        np.testing.assert_allclose(image.affine, mr.affine, atol=1e-5)
    assert sct.get_data_dtype() == np.int16
    data = np.asarray(sct.dataobj)
    assert data.min() == -1000 and data.max() <= 3071


def test_convert_logs_no_patient_name_or_id(runs: Runs, work: Work) -> None:
    run = runs["axial classical"]
    assert run.returncode == 0, run
    header = pydicom.dcmread(next(work.mr.glob("*.dcm")), stop_before_pixels=True)
    assert "INFO" in run.stderr and str(header.SeriesInstanceUID) in run.stderr  # it does log
    assert str(header.PatientID) not in run.stderr
    for part in str(header.PatientName).split("^"):
        assert part not in run.stderr


@pytest.mark.parametrize(
    "case",
    [
        "empty folder",
        "two series",
        "CT series",
        "truncated file",
        "missing slices",
        "not an image",
        "no such path",
        "no such model",
        "NIfTI to DICOM",
    ],
)
def test_bad_input_is_one_line_and_an_exit_code(runs: Runs, work: Work, case: str) -> None:
    run = runs[case]
    args, expected = work.bad[case]
    assert run.returncode == 1, run
    assert "Traceback" not in run.stderr
    messages = run.messages()
    assert len(messages) == 1, run
    assert messages[0].startswith("bonect: error:"), run
    assert expected in messages[0]
    assert not (work.root / str(args[2])).exists()  # nothing written


@pytest.mark.skipif(CUDA, reason="checks the refusal without CUDA")
def test_a_missing_gpu_is_one_line_and_an_exit_code(work: Work) -> None:
    run = bonect("quality", "--device", "cuda", "--out", "quality-gpu", cwd=work.root)
    assert run.returncode == 1, run
    assert run.messages() == [
        "bonect: error: device 'cuda' requested but no CUDA device is available"
    ], run
    assert not (work.root / "quality-gpu").exists()


def test_bad_config_exits_78(runs: Runs, work: Work) -> None:
    run = runs["bad config"]
    assert run.returncode == 78, run
    assert "Traceback" not in run.stderr
    assert run.messages()[0].startswith("bonect: config error:")
    assert "converter.colour: Extra inputs are not permitted" in run.stderr
    assert not (work.root / "out-config").exists()


def test_a_reader_that_goes_away_is_not_an_error() -> None:
    # `bonect-daemon status | head -1` once exited 70 with a BrokenPipeError traceback
    program = (
        "import argparse, sys\n"
        "from bonect.cli_boundary import run\n"
        "def handler(args):\n"
        "    for i in range(200000):\n"
        "        print('line', i)\n"
        "    return 0\n"
        "sys.exit(run(handler, argparse.Namespace(verbose=0)))\n"
    )
    result = subprocess.run(
        [
            "bash",
            "-c",
            'set -o pipefail; "$0" -c "$1" | head -1; echo "status=$?" >&2',
            sys.executable,
            program,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout == "line 0\n"
    assert result.stderr.strip() == "status=141"  # as a program ended by SIGPIPE; no traceback
