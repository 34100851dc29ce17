"""Sites and their importers (SynthRAD, NIfTI, DICOM, phantom); bad input costs only itself."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bonect.catalog.records import patient_key
from bonect.converter.volume import read_nifti, write_nifti
from bonect.phantom.cohort import WrittenPatient, write_patient
from bonect.phantom.generate import Acquisition, generate_case, patient_seed
from bonect.phantom.variation import draw_acquisition
from bonect.trainer import importers
from bonect.trainer.sites import SiteError, SiteStore

COARSE = Acquisition("axial", (4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def two_patients(tmp_path_factory: pytest.TempPathFactory) -> list[WrittenPatient]:
    out = tmp_path_factory.mktemp("phantom")
    return [
        write_patient(
            generate_case(31, i, contrast="ute", acquisition=COARSE, ct_acquisition=COARSE),
            31,
            out,
        )
        for i in range(2)
    ]


def test_synthrad_folders_import_with_the_ct_already_on_the_mr_grid(
    tmp_path: Path, two_patients: list[WrittenPatient]
) -> None:
    source = tmp_path / "synthrad"
    for p in two_patients:
        case = source / p.folder.name
        case.mkdir(parents=True)
        shutil.copy(p.mr_nifti, case / "mr.nii.gz")
        shutil.copy(p.ct_nifti, case / "ct.nii.gz")
    lonely = source / "1HNX999"  # an MR with no CT
    lonely.mkdir()
    shutil.copy(two_patients[0].mr_nifti, lonely / "mr.nii.gz")
    store = SiteStore(tmp_path / "trainer")
    summary = importers.import_synthrad(store, "synthrad-a", source)
    assert summary.added == [p.folder.name for p in two_patients]
    assert summary.skipped == [("1HNX999", "no ct.nii.gz (an MR needs its CT)")]
    pairs = store.pairs(store.site("synthrad-a"))
    assert [p.case for p in pairs] == summary.added
    assert all(p.ct_on_mr_grid for p in pairs)
    assert len({p.patient_key for p in pairs}) == 2
    original = read_nifti(two_patients[0].ct_nifti)
    np.testing.assert_array_equal(read_nifti(pairs[0].ct).array, original.array)


def test_nifti_pairs_import_and_an_unpaired_file_is_listed(
    tmp_path: Path, two_patients: list[WrittenPatient]
) -> None:
    source = tmp_path / "nifti"
    source.mkdir()
    p = two_patients[0]
    shutil.copy(p.mr_nifti, source / "a1_mr.nii.gz")
    shutil.copy(p.ct_nifti, source / "a1_ct.nii.gz")
    shutil.copy(p.mr_nifti, source / "a2_mr.nii.gz")
    (source / "a3_mr.nii.gz").write_bytes(b"not a nifti")
    shutil.copy(p.ct_nifti, source / "a3_ct.nii.gz")
    store = SiteStore(tmp_path / "trainer")
    summary = importers.import_nifti(store, "nifti-b", source)
    assert summary.added == ["a1"]
    reasons = dict(summary.skipped)
    assert reasons["a2"] == "only a MR (no CT)"
    assert "not a readable NIfTI file" in reasons["a3"]
    assert [s.name for s in store.sites()] == ["nifti-b"]


def test_dicom_import_pairs_mr_and_ct_of_the_same_patient_only(
    tmp_path: Path, two_patients: list[WrittenPatient]
) -> None:
    source = tmp_path / "dicom"
    first, second = two_patients
    assert first.ct_dicom is not None
    shutil.copytree(first.mr_dicom, source / "p1" / "mr")
    shutil.copytree(first.ct_dicom, source / "p1" / "ct")
    shutil.copytree(second.mr_dicom, source / "p2" / "mr")  # no CT of this patient
    store = SiteStore(tmp_path / "trainer")
    summary = importers.import_dicom(store, "dicom-c", source)
    assert len(summary.added) == 1
    ((_, reason),) = summary.skipped
    assert "no CT of the patient within 183 days" in reason
    pair = store.pairs(store.site("dicom-c"))[0]
    mr_header = pydicom.dcmread(next(first.mr_dicom.iterdir()), stop_before_pixels=True)
    assert pair.patient_key == patient_key(mr_header.PatientID, mr_header.IssuerOfPatientID)
    assert not pair.ct_on_mr_grid
    assert mr_header.PatientID not in pair.case and mr_header.PatientID not in str(pair.folder)
    assert read_nifti(pair.mr).shape == read_nifti(first.mr_nifti).shape


def test_a_ct_of_another_patient_is_never_paired(
    tmp_path: Path, two_patients: list[WrittenPatient]
) -> None:
    source = tmp_path / "dicom"
    first, second = two_patients
    assert second.ct_dicom is not None
    shutil.copytree(first.mr_dicom, source / "mr")
    shutil.copytree(second.ct_dicom, source / "ct")
    store = SiteStore(tmp_path / "trainer")
    summary = importers.import_dicom(store, "dicom-d", source)
    assert summary.added == []
    assert len(summary.skipped) == 1


def test_phantom_import_renders_mr_and_a_ct_from_another_session(tmp_path: Path) -> None:
    store = SiteStore(tmp_path / "trainer")
    store.root.mkdir(parents=True)
    summary = importers.import_phantom(
        store,
        "ph",
        patients=2,
        seed=5,
        contrast="gre",
        mr_spacing=(5.0, 5.0, 5.0),
        ct_spacing=(5.0, 5.0, 5.0),
    )
    assert summary.added == ["PH0005001", "PH0005002"]
    pairs = store.pairs(store.site("ph"))
    assert [p.provenance["contrast"] for p in pairs] == ["gre", "gre"]
    assert pairs[0].patient_key == patient_key("PH0005001", "BONECT-PHANTOM")
    assert not pairs[0].ct_on_mr_grid


def test_phantom_families_draw_technique_and_acquisition(tmp_path: Path) -> None:
    store = SiteStore(tmp_path / "trainer")
    store.root.mkdir(parents=True)
    spacing = (5.0, 5.0, 5.0)
    summary = importers.import_phantom(
        store, "wide", patients=3, seed=21, family="wide", mr_spacing=spacing, ct_spacing=spacing
    )
    assert summary.added == ["PH0021001", "PH0021002", "PH0021003"]  # as classic
    site, pairs = store.site("wide"), store.pairs(store.site("wide"))
    assert site.source == "phantom cohort 21, wide, technique drawn"
    assert [p.provenance["family"] for p in pairs] == ["wide"] * 3
    assert len({p.provenance["contrast"] for p in pairs}) > 1  # drawn per patient
    for index, pair in enumerate(pairs):  # the family's own acquisition, at the given voxel size
        drawn = draw_acquisition(patient_seed(21, index), "wide")
        assert pair.provenance["orientation"] == drawn.orientation
        assert pair.provenance["mr_spacing"] == list(spacing)
        assert importers.phantom_acquisition(21, index, "wide", None) == drawn  # unchanged

    importers.import_phantom(store, "shifted", patients=1, seed=22, family="shifted",
                             contrast="petra", mr_spacing=spacing, ct_spacing=spacing)  # fmt: skip
    assert store.pairs(store.site("shifted"))[0].provenance["contrast"] == "petra"
    with pytest.raises(SiteError, match="classic phantom has no PETRA"):
        importers.import_phantom(store, "classic", patients=1, seed=23, contrast="petra")
    assert [s.name for s in store.sites()] == ["shifted", "wide"]  # nothing half-made


def test_unknown_sites_and_bad_names_are_one_line_errors(tmp_path: Path) -> None:
    store = SiteStore(tmp_path / "trainer")
    with pytest.raises(SiteError, match=r"unknown site 'nowhere' \(known: none yet\)"):
        store.site("nowhere")
    with pytest.raises(SiteError, match=r"site name '\.\./x'"):
        store.create_site("../x", "nifti", "")
    store.create_site("a", "nifti", "")
    with pytest.raises(SiteError, match="holds nifti data"):
        store.create_site("a", "dicom", "")


def test_a_damaged_pair_folder_is_skipped_with_a_warning(
    tmp_path: Path, two_patients: list[WrittenPatient], caplog: pytest.LogCaptureFixture
) -> None:
    store = SiteStore(tmp_path / "trainer")
    site = store.create_site("s", "nifti", "")
    p = two_patients[0]
    store.add_pair(site, "ok", patient_key="k1", mr=p.mr_nifti, ct=p.ct_nifti, ct_on_mr_grid=True)
    broken = store.add_pair(
        site, "broken", patient_key="k2", mr=p.mr_nifti, ct=p.ct_nifti, ct_on_mr_grid=True
    )
    broken.ct.unlink()
    assert [pair.case for pair in store.pairs(site)] == ["ok"]
    assert "pair s/broken: ct.nii.gz is missing" in caplog.text
    write_nifti(read_nifti(p.ct_nifti), broken.ct)
    assert [pair.case for pair in store.pairs(site)] == ["broken", "ok"]
