"""Every crash of the series reader the fuzzers found, as an explicit input, and three found by
hand with the fuzz target's invariant (huge Rows and Columns; a non-finite rescale; a finite
rescale that overflows float32).

Found on 2026-12-07 (``tests/fuzz/run.py``, atheris; docs/reliability.md); the inputs are
rebuilt here with a few lines of pydicom from the synthetic series instead of kept as binary
blobs. Each case runs under pydicom's default (lenient) reading, as the daemon does, and under
the suite's strict one; each failed before its fix in the lenient mode (the strict one already
refuses "nan" as a decimal string).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset

from bonect.converter.dicom_reader import read_mr_folder
from bonect.errors import SeriesError
from series_factory import make_enhanced_mr, make_mr_series, write_series

SHAPE = (3, 8, 8)


@pytest.fixture(params=["lenient", "strict"])
def reading_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """pydicom's default reading mode (the daemon's), then the suite's strict one."""
    if request.param == "lenient":
        pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    yield str(request.param)


def _series_with_third_slice(tmp_path: Path, damage: Callable[[Dataset], bytes]) -> Path:
    """A folder of a valid three-slice series whose third file is ``damage(third slice)``."""
    datasets = make_mr_series(SHAPE)
    write_series(datasets[:2], tmp_path)
    (tmp_path / "IM00003.dcm").write_bytes(damage(datasets[2]))
    return tmp_path


def _file_bytes(ds: Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_an_unknown_vr_in_a_header_is_a_series_error(reading_mode: str, tmp_path: Path) -> None:
    """One damaged byte in an explicit VR header ("UI" -> "U\\t" in SOP Class UID): pydicom
    raised NotImplementedError where the value was first used, which escaped the reader."""

    def damage(ds: Dataset) -> bytes:
        raw = _file_bytes(ds)
        sop_class = b"\x08\x00\x16\x00UI"  # (0008,0016) SOPClassUID, VR UI
        assert raw.count(sop_class) == 1
        return raw.replace(sop_class, b"\x08\x00\x16\x00U\t")

    folder = _series_with_third_slice(tmp_path, damage)
    with pytest.raises(SeriesError, match="malformed or missing DICOM attribute"):
        read_mr_folder(folder)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_sequence_cut_short_is_a_series_error_not_an_os_error(
    reading_mode: str, tmp_path: Path
) -> None:
    """A file that ends inside a sequence of undefined length: pydicom raises a bare OSError
    ("No tag to read at file position ..."), which the reader passed on as a disk error, so
    the worker would have retried the job instead of failing it."""

    def damage(ds: Dataset) -> bytes:
        ds.ReferencedImageSequence = [Dataset()]
        raw = _file_bytes(ds)
        at = raw.index(b"\x08\x00\x40\x11SQ\x00\x00")  # (0008,1140), explicit VR
        return raw[: at + 8] + b"\xff\xff\xff\xff"  # undefined length, then the end

    folder = _series_with_third_slice(tmp_path, damage)
    with pytest.raises(SeriesError, match=r"IM00003\.dcm: unreadable or truncated"):
        read_mr_folder(folder)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_nested_sequence_cut_short_is_a_series_error(reading_mode: str, tmp_path: Path) -> None:
    """The same inside a sequence of defined length, which pydicom parses only when the value
    is first used: an Enhanced MR whose per-frame functional groups hold a sequence with no
    end; the OSError came out of the reader's checks, past ``dcmread``."""
    raw = _file_bytes(make_enhanced_mr(SHAPE))
    tag = b"\x00\x52\x30\x92SQ\x00\x00"  # (5200,9230) PerFrameFunctionalGroupsSequence
    at = raw.index(tag)
    end = at + 12 + int.from_bytes(raw[at + 8 : at + 12], "little")
    nested = b"\x20\x00\x13\x91SQ\x00\x00\xff\xff\xff\xff"  # PlanePositionSequence: no end
    item = b"\xfe\xff\x00\xe0" + len(nested).to_bytes(4, "little") + nested
    outer = tag + len(item).to_bytes(4, "little") + item
    (tmp_path / "enhanced.dcm").write_bytes(raw[:at] + outer + raw[end:])
    with pytest.raises(SeriesError, match="malformed or missing DICOM attribute"):
        read_mr_folder(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_huge_rows_and_columns_are_a_series_error_not_a_memory_error(
    reading_mode: str, tmp_path: Path
) -> None:
    """An Enhanced MR of three 8x8 frames whose header claims 65535 x 65535: the reader
    allocated the volume from the header (48 GiB) before decoding, and numpy raised
    MemoryError; now the pixel data is decoded and checked first."""
    ds = make_enhanced_mr(SHAPE)
    ds.Rows = ds.Columns = 65535
    write_series([ds], tmp_path)
    with pytest.raises(SeriesError, match="pixel data cannot be decoded"):
        read_mr_folder(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_value_that_does_not_fit_its_vr_is_a_series_error(
    reading_mode: str, tmp_path: Path
) -> None:
    """A frame's Plane Position Sequence whose VR was damaged from SQ to FD (8-byte values)
    with 36 bytes: pydicom's BytesLengthException (an ``Exception``, neither a ValueError nor
    an OSError) escaped the reader when the frame's geometry was read."""
    raw = _file_bytes(make_enhanced_mr(SHAPE))
    sequence = b"\x20\x00\x13\x91SQ\x00\x00"  # (0020,9113) PlanePositionSequence, frame 1
    at = raw.index(sequence)
    length = int.from_bytes(raw[at + 8 : at + 12], "little")
    assert (length + 4) % 8 != 0  # the old length field and the value, as 8-byte values
    damaged = b"\x20\x00\x13\x91FD" + (length + 4).to_bytes(2, "little")  # same total length
    (tmp_path / "enhanced.dcm").write_bytes(raw[:at] + damaged + raw[at + 8 :])
    with pytest.raises(SeriesError, match="malformed or missing DICOM attribute"):
        read_mr_folder(tmp_path)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", [b"nan ", b"inf "], ids=["nan", "inf"])
def test_a_non_finite_rescale_is_a_series_error(
    reading_mode: str, value: bytes, tmp_path: Path
) -> None:
    """RescaleSlope "nan" or "inf" in one slice (pydicom reads it leniently as a float): the
    reader returned a volume of NaN or infinite values, which the model would have converted."""

    def damage(ds: Dataset) -> bytes:
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "0.0"
        raw = _file_bytes(ds)
        assert raw.count(b"DS\x04\x001.5 ") == 1  # (0028,1053) RescaleSlope, padded to 4
        return raw.replace(b"DS\x04\x001.5 ", b"DS\x04\x00" + value)

    folder = _series_with_third_slice(tmp_path, damage)
    with pytest.raises(SeriesError):
        read_mr_folder(folder)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_finite_rescale_that_overflows_float32_is_a_series_error(
    reading_mode: str, tmp_path: Path
) -> None:
    """RescaleSlope "1e35" in one slice: finite, so the finiteness check let it pass, and the
    slice's values (up to 4095 x 1e35) became inf in the float32 volume. Now the rescaled range
    is computed first (float64) and must lie within ±1e6."""

    def damage(ds: Dataset) -> bytes:
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "0.0"
        raw = _file_bytes(ds)
        assert raw.count(b"DS\x04\x001.5 ") == 1  # (0028,1053) RescaleSlope, padded to 4
        return raw.replace(b"DS\x04\x001.5 ", b"DS\x04\x001e35")

    folder = _series_with_third_slice(tmp_path, damage)
    with pytest.raises(SeriesError, match=r"IM00003\.dcm: RescaleSlope 1e\+35 .* outside"):
        read_mr_folder(folder)
