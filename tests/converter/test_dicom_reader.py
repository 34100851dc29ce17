"""Tests of bonect.converter.dicom_reader: geometry, codecs, and refusal of unusable input."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    GrayscaleSoftcopyPresentationStateStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from bonect.converter.dicom_reader import read_mr_datasets, read_mr_files, read_mr_folder
from bonect.converter.series import ImageSeries
from bonect.errors import SeriesError
from series_factory import (
    make_enhanced_mr,
    make_mr_series,
    orientation_cosines,
    slice_positions,
    synthetic_pixels,
    write_series,
)

SHAPE = (8, 16, 16)
SPACING = (2.5, 0.75, 1.25)
OBLIQUE = (0.866025404, 0.5, 0.0, -0.35355339, 0.612372436, -0.707106781)


def _assert_geometry(series: ImageSeries, datasets: list[Dataset]) -> None:
    """Each dataset's pixels lie in the volume where its IPP, IOP and PixelSpacing put them."""
    vol = series.volume
    assert vol.array.dtype == np.float32
    assert vol.shape == (len(datasets), int(datasets[0].Rows), int(datasets[0].Columns))
    by_uid = {src.sop_instance_uid: k for k, src in enumerate(series.sources)}
    for ds in datasets:
        k = by_uid[str(ds.SOPInstanceUID)]
        slope = float(ds.get("RescaleSlope", 1.0))
        intercept = float(ds.get("RescaleIntercept", 0.0))
        np.testing.assert_array_equal(
            vol.array[k], ds.pixel_array.astype(np.float32) * slope + intercept
        )
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)
        for r, c in [(0, 0), (0, vol.shape[2] - 1), (vol.shape[1] - 1, 3), (5, 7)]:
            expected = ipp + r * dr * iop[3:] + c * dc * iop[:3]
            got = vol.index_to_patient(np.array([k, r, c], dtype=np.float64))
            np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("orientation", ["axial", "sagittal", "coronal", OBLIQUE])
@pytest.mark.parametrize("direction", [1, -1])
def test_classic_series_volume_and_affine(
    orientation: str | tuple[float, ...], direction: int
) -> None:
    datasets = make_mr_series(SHAPE, SPACING, orientation, direction=direction, seed=3)
    series = read_mr_datasets(datasets)

    _assert_geometry(series, datasets)
    np.testing.assert_allclose(series.volume.spacing, SPACING, atol=1e-6)
    # slices run along increasing position on the normal, whatever the acquisition order
    iop = orientation_cosines(orientation)
    normal = np.cross(iop[:3], iop[3:])
    assert series.volume.affine[:3, 0] @ normal > 0
    pixels = synthetic_pixels(SHAPE, seed=3).astype(np.float32)
    expected = pixels if direction == 1 else pixels[::-1]
    np.testing.assert_array_equal(series.volume.array, expected)
    positions = slice_positions(SHAPE[0], SPACING[0], orientation, direction=direction)
    expected_positions = positions if direction == 1 else positions[::-1]
    np.testing.assert_allclose(series.volume.slice_positions(), expected_positions, atol=1e-6)


def test_shuffled_order_gives_the_same_series() -> None:
    datasets = make_mr_series(SHAPE, SPACING, "sagittal", seed=1)
    reference = read_mr_datasets(datasets)
    shuffled = list(datasets)
    random.Random(7).shuffle(shuffled)
    again = read_mr_datasets(shuffled)

    np.testing.assert_array_equal(again.volume.array, reference.volume.array)
    np.testing.assert_array_equal(again.volume.affine, reference.volume.affine)
    assert again.sources == reference.sources
    assert again.header.SOPInstanceUID == reference.header.SOPInstanceUID


def test_rescale_is_applied_as_float32() -> None:
    datasets = make_mr_series(SHAPE, SPACING, rescale=(0.5, -10.0))
    series = read_mr_datasets(datasets)
    expected = synthetic_pixels(SHAPE).astype(np.float32) * 0.5 - 10.0
    np.testing.assert_array_equal(series.volume.array, expected)


def test_header_and_sources() -> None:
    datasets = make_mr_series(SHAPE, SPACING, direction=-1)
    series = read_mr_datasets(datasets)

    assert "PixelData" not in series.header
    assert series.header.SOPInstanceUID == datasets[-1].SOPInstanceUID  # lowest slice first
    assert series.series_uid == datasets[0].SeriesInstanceUID
    assert series.frame_of_reference_uid == datasets[0].FrameOfReferenceUID
    assert series.header.PatientID == datasets[0].PatientID
    assert series.header.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert [s.sop_instance_uid for s in series.sources] == [
        ds.SOPInstanceUID for ds in reversed(datasets)
    ]
    assert all(s.frame_number is None for s in series.sources)
    assert "PixelData" in datasets[0]  # the input is left alone


def test_folder_files_and_datasets_agree(tmp_path: Path) -> None:
    datasets = make_mr_series(SHAPE, SPACING, "coronal")
    paths = write_series(datasets[:4], tmp_path / "a") + write_series(datasets[4:], tmp_path / "b")
    (tmp_path / "DICOMDIR").write_bytes(b"not a real DICOMDIR")
    (tmp_path / ".DS_Store").write_bytes(b"junk")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "junk.dcm").write_bytes(b"junk")

    from_folder = read_mr_folder(tmp_path)
    from_files = read_mr_files(list(reversed(paths)))
    in_memory = read_mr_datasets(datasets)

    for series in (from_folder, from_files):
        np.testing.assert_array_equal(series.volume.array, in_memory.volume.array)
        np.testing.assert_allclose(series.volume.affine, in_memory.volume.affine, atol=1e-9)
        assert series.sources == in_memory.sources


@pytest.mark.parametrize("per_frame_geometry", [False, True])
@pytest.mark.parametrize("orientation", ["axial", "sagittal", OBLIQUE])
def test_enhanced_mr_equals_classic(
    per_frame_geometry: bool, orientation: str | tuple[float, ...]
) -> None:
    order = [3, 0, 7, 1, 6, 2, 5, 4]
    enhanced = make_enhanced_mr(
        SHAPE,
        SPACING,
        orientation,
        seed=5,
        rescale=(2.0, 1.0),
        per_frame_geometry=per_frame_geometry,
        frame_order=order,
    )
    classic = make_mr_series(SHAPE, SPACING, orientation, seed=5, rescale=(2.0, 1.0))

    got = read_mr_datasets([enhanced])
    want = read_mr_datasets(classic)

    np.testing.assert_array_equal(got.volume.array, want.volume.array)
    np.testing.assert_allclose(got.volume.affine, want.volume.affine, atol=1e-9)
    # frame f holds generated slice order[f]; the volume holds them sorted
    assert [s.frame_number for s in got.sources] == [order.index(k) + 1 for k in range(8)]
    assert {s.sop_instance_uid for s in got.sources} == {enhanced.SOPInstanceUID}
    assert "PixelData" not in got.header
    assert "PerFrameFunctionalGroupsSequence" not in got.header
    assert "SharedFunctionalGroupsSequence" in got.header
    assert "PerFrameFunctionalGroupsSequence" in enhanced


def test_enhanced_mr_from_file(tmp_path: Path) -> None:
    enhanced = make_enhanced_mr(SHAPE, SPACING, "coronal", seed=2)
    write_series([enhanced], tmp_path)
    series = read_mr_folder(tmp_path)
    want = read_mr_datasets(make_mr_series(SHAPE, SPACING, "coronal", seed=2))
    np.testing.assert_array_equal(series.volume.array, want.volume.array)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_series_round_trip(syntax: UID, tmp_path: Path) -> None:
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder plugin for {syntax.name}")
    shape = (4, 64, 48)  # OpenJPEG's default 6 resolutions need tiles of 32+ pixels
    datasets = make_mr_series(shape, SPACING, "sagittal", seed=9)
    for ds in datasets:
        ds.compress(syntax)
    paths = write_series(datasets, tmp_path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax

    series = read_mr_folder(tmp_path)
    expected = synthetic_pixels(shape, seed=9).astype(np.float32)
    np.testing.assert_array_equal(series.volume.array, expected)


def test_compressed_enhanced_mr_round_trip(tmp_path: Path) -> None:
    enhanced = make_enhanced_mr(SHAPE, SPACING, "axial", seed=4)
    enhanced.compress(RLELossless)
    write_series([enhanced], tmp_path)
    series = read_mr_folder(tmp_path)
    np.testing.assert_array_equal(
        series.volume.array, synthetic_pixels(SHAPE, seed=4).astype(np.float32)
    )


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_uncompressed_transfer_syntaxes(syntax: UID, tmp_path: Path) -> None:
    datasets = make_mr_series(SHAPE, SPACING, transfer_syntax=syntax, seed=6)
    paths = write_series(datasets, tmp_path)
    assert pydicom.dcmread(paths[0]).file_meta.TransferSyntaxUID == syntax
    series = read_mr_files(paths)
    np.testing.assert_array_equal(
        series.volume.array, synthetic_pixels(SHAPE, seed=6).astype(np.float32)
    )


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
    ],
)
def test_real_encoded_files_decode(name: str, tmp_path: Path) -> None:
    """pydicom's MR_small in several encodings, cloned into a two-slice series."""
    reference_path = get_testdata_file("MR_small.dcm")
    path = get_testdata_file(name)
    if path is None or reference_path is None:
        pytest.skip(f"pydicom test file {name} not available")
    reference = pydicom.dcmread(reference_path).pixel_array.astype(np.float32)
    files = []
    for k in range(2):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        z = float(ds.ImagePositionPatient[2]) + 3.0 * k
        ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], f"{z:.4f}"]
        files.append(tmp_path / f"{k}.dcm")
        ds.save_as(files[-1])
    series = read_mr_files(files)
    np.testing.assert_array_equal(series.volume.array, np.stack([reference, reference]))
    np.testing.assert_allclose(series.volume.spacing, (3.0, 0.3125, 0.3125), atol=1e-6)


# --- refusal of unusable input ------------------------------------------------------------


def _raises(match: str, call: Callable[[], object]) -> SeriesError:
    with pytest.raises(SeriesError) as info:
        call()
    message = str(info.value)
    assert match in message, message
    assert "\n" not in message
    return info.value


def _sr(series_uid: str, sop_class: UID = BasicTextSRStorage, modality: str = "SR") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.Modality = modality
    ds.PatientName = "Synthetic^Patient"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid
    return ds


def test_empty_and_missing_inputs(tmp_path: Path) -> None:
    _raises("empty folder", lambda: read_mr_folder(tmp_path))
    (tmp_path / ".hidden").write_bytes(b"x")
    (tmp_path / "DICOMDIR").write_bytes(b"x")
    _raises("empty folder", lambda: read_mr_folder(tmp_path))
    _raises("not a folder", lambda: read_mr_folder(tmp_path / "nowhere"))
    _raises("no DICOM files", lambda: read_mr_files([]))
    _raises("no DICOM datasets", lambda: read_mr_datasets([]))
    _raises("no such file", lambda: read_mr_files([tmp_path / "gone.dcm"]))


def test_non_dicom_file_is_named(tmp_path: Path) -> None:
    paths = write_series(make_mr_series(SHAPE, SPACING), tmp_path)
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not DICOM\n" * 20)
    error = _raises("not a DICOM file", lambda: read_mr_folder(tmp_path))
    assert str(junk) in str(error)
    _raises(str(junk), lambda: read_mr_files([*paths, junk]))


@pytest.mark.filterwarnings("ignore:End of file reached")
@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(
    ("syntax", "keep"),
    [
        (ExplicitVRLittleEndian, 0.05),  # inside the preamble
        (ExplicitVRLittleEndian, 0.1),  # inside the file meta
        (ExplicitVRLittleEndian, 0.5),  # inside the header
        (ExplicitVRLittleEndian, 0.9),  # inside the pixel data
        (ExplicitVRLittleEndian, -1),  # one byte short
        (RLELossless, 0.5),
        (RLELossless, 0.9),  # inside the encapsulated fragments
        (RLELossless, -9),  # into the last fragment; only the delimiter item is shorter than 8
    ],
)
def test_truncated_file_is_named(strict: bool, syntax: UID, keep: float, tmp_path: Path) -> None:
    """A file cut short anywhere is refused with its name (pydicom reads most such silently)."""
    if not strict:
        pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    datasets = make_mr_series(SHAPE, SPACING, seed=1)
    if syntax != ExplicitVRLittleEndian:
        for ds in datasets:
            ds.compress(syntax)
    paths = write_series(datasets, tmp_path)
    raw = paths[3].read_bytes()
    cut = int(len(raw) * keep) if keep > 0 else len(raw) + int(keep)
    paths[3].write_bytes(raw[:cut])
    with pytest.raises(SeriesError) as info:
        read_mr_folder(tmp_path)
    message = str(info.value)
    assert str(paths[3]) in message
    assert "truncated" in message or "not a DICOM file" in message, message
    assert "\n" not in message


def test_non_image_objects_are_refused() -> None:
    uid = generate_uid()
    error = _raises("no pixel data", lambda: read_mr_datasets([_sr(uid), _sr(uid)]))
    assert "not an image" in str(error)
    assert error.series_uid == uid
    pr = _sr(uid, GrayscaleSoftcopyPresentationStateStorage, "PR")
    _raises("no pixel data", lambda: read_mr_datasets([pr]))
    datasets = make_mr_series(SHAPE, SPACING)
    del datasets[2].PixelData
    error = _raises("no pixel data", lambda: read_mr_datasets(datasets))
    assert "truncated" in str(error) and datasets[2].SOPInstanceUID in str(error)


def test_ct_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING, modality="CT")
    error = _raises("series is CT, not MR", lambda: read_mr_datasets(datasets))
    assert error.series_uid == datasets[0].SeriesInstanceUID


def test_mixed_series_are_refused() -> None:
    a = make_mr_series(SHAPE, SPACING)
    b = make_mr_series(SHAPE, SPACING, study_uid=a[0].StudyInstanceUID)
    error = _raises("2 series in input", lambda: read_mr_datasets(a + b))
    assert a[0].SeriesInstanceUID in str(error) and b[0].SeriesInstanceUID in str(error)


def test_mixed_orientations_are_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING, "axial")
    datasets[4].ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    _raises("mixed orientations", lambda: read_mr_datasets(datasets))


def test_mixed_image_sizes_are_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    other = make_mr_series((8, 16, 20), SPACING, series_uid=datasets[0].SeriesInstanceUID)
    datasets[5] = other[5]
    _raises("mixed rows/columns", lambda: read_mr_datasets(datasets))


def test_mixed_pixel_spacing_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    datasets[5].PixelSpacing = [0.5, 0.5]
    _raises("mixed pixel spacing", lambda: read_mr_datasets(datasets))


def test_duplicate_positions_are_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    twin = copy.deepcopy(datasets[2])
    twin.SOPInstanceUID = generate_uid()
    _raises("duplicate slice positions", lambda: read_mr_datasets([*datasets, twin]))


def test_missing_slices_are_refused() -> None:
    datasets = make_mr_series((10, 16, 16), SPACING, "axial", origin=(0.0, 0.0, 0.0))
    del datasets[4:6]  # z = 10.0 and 12.5 mm are missing
    error = _raises("missing slices", lambda: read_mr_datasets(datasets))
    assert "about 2 slices" in str(error)
    assert "between 7.50 and 15.00 mm" in str(error)


def test_irregular_spacing_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING, "axial", origin=(0.0, 0.0, 0.0))
    for k, ds in enumerate(datasets):  # steps alternate 2.0 and 3.0 mm
        ds.ImagePositionPatient = [0.0, 0.0, 2.5 * k + (0.5 if k % 2 else 0.0)]
    _raises("irregular slice spacing", lambda: read_mr_datasets(datasets))


def test_too_few_slices_are_refused() -> None:
    _raises("at least 2", lambda: read_mr_datasets(make_mr_series((1, 16, 16), SPACING)))
    single = make_enhanced_mr((1, 16, 16), SPACING)
    _raises("at least 2", lambda: read_mr_datasets([single]))


def test_single_frame_and_enhanced_mixed_are_refused() -> None:
    classic = make_mr_series(SHAPE, SPACING)
    enhanced = make_enhanced_mr(SHAPE, SPACING, series_uid=classic[0].SeriesInstanceUID)
    _raises("single-frame and Enhanced", lambda: read_mr_datasets([*classic, enhanced]))


def test_missing_geometry_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    del datasets[3].ImagePositionPatient
    _raises("no ImagePositionPatient", lambda: read_mr_datasets(datasets))
    enhanced = make_enhanced_mr(SHAPE, SPACING)
    del enhanced.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
    _raises("no PixelSpacing", lambda: read_mr_datasets([enhanced]))


def test_undecodable_pixel_data_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    for ds in datasets:
        ds.compress(RLELossless)
    datasets[2].PixelData = datasets[2].PixelData[:40] + b"\x00" * 8
    error = _raises("cannot be decoded", lambda: read_mr_datasets(datasets))
    assert datasets[2].SOPInstanceUID in str(error)


def test_malformed_geometry_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    datasets[1].PixelSpacing = [0.5]
    _raises("invalid PixelSpacing", lambda: read_mr_datasets(datasets))
    datasets = make_mr_series(SHAPE, SPACING)
    datasets[1].ImageOrientationPatient = [1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    _raises("invalid ImageOrientationPatient", lambda: read_mr_datasets(datasets))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("strict", [True, False])
def test_garbage_attribute_value_in_file_is_refused(strict: bool, tmp_path: Path) -> None:
    if not strict:
        pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    paths = write_series(make_mr_series(SHAPE, SPACING, origin=(-12.5, 0.0, 0.0)), tmp_path)
    raw = paths[2].read_bytes()
    assert raw.count(b"-12.5\\") == 1
    paths[2].write_bytes(raw.replace(b"-12.5\\", b"abc?!\\"))
    error = _raises("invalid ImagePositionPatient", lambda: read_mr_folder(tmp_path))
    assert str(paths[2]) in str(error)


def test_colour_image_is_refused() -> None:
    datasets = make_mr_series(SHAPE, SPACING)
    datasets[0].SamplesPerPixel = 3
    _raises("colour image", lambda: read_mr_datasets(datasets))


@pytest.mark.parametrize(
    ("slope", "intercept"),
    [
        ("1e35", "0"),  # overflows float32: the volume was inf
        ("1e30", "0"),  # finite in float32, but no image has such values
        ("1", "-1e30"),
        ("250", "0"),  # just past the bound (stored values up to ~4090)
    ],
    ids=["overflows-float32", "huge-slope", "huge-intercept", "just-past-the-bound"],
)
def test_a_finite_rescale_far_outside_any_intensity_is_refused(
    slope: str, intercept: str, tmp_path: Path
) -> None:
    """A finite RescaleSlope/Intercept that maps a file's stored values outside ±1e6 names the
    file, both attributes and the range they give; "1e35" used to give a volume of inf."""
    paths = write_series(make_mr_series(SHAPE, SPACING), tmp_path)
    damaged = pydicom.dcmread(paths[2])
    damaged.RescaleSlope, damaged.RescaleIntercept = slope, intercept
    damaged.save_as(paths[2], enforce_file_format=True)
    low, high = int(damaged.pixel_array.min()), int(damaged.pixel_array.max())
    assert 4000 < high < 4096
    ends = sorted(float(slope) * v + float(intercept) for v in (low, high))
    expected = f"map stored values {low}..{high} to {ends[0]:g}..{ends[1]:g}, outside ±1e+06"
    error = _raises(expected, lambda: read_mr_folder(tmp_path))
    assert str(paths[2]) in str(error)
    assert f"RescaleSlope {float(slope):g} and RescaleIntercept {float(intercept):g}" in str(error)


def test_a_rescale_within_the_bound_is_read_and_a_frame_past_it_is_named() -> None:
    """Slope 244 maps 0..4095 into ±1e6 and is read; an Enhanced MR frame's own Pixel Value
    Transformation past the bound is refused with its frame number."""
    stored = synthetic_pixels(SHAPE)
    series = read_mr_datasets(make_mr_series(SHAPE, SPACING, rescale=(244.0, -1000.0)))
    np.testing.assert_array_equal(series.volume.array, stored.astype(np.float32) * 244.0 - 1000.0)
    enhanced = make_enhanced_mr(SHAPE, SPACING, per_frame_geometry=True, rescale=(1.0, 0.0))
    enhanced.PerFrameFunctionalGroupsSequence[4].PixelValueTransformationSequence[
        0
    ].RescaleSlope = "1e35"
    error = _raises("frame 5", lambda: read_mr_datasets([enhanced]))
    assert "RescaleSlope 1e+35" in str(error)
