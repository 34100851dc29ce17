"""The phantom's families: drawn within their ranges, wide and shifted disjoint, pathology and
artefacts rendered, and the documented table the same as the code's."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bonect.phantom.acquisition import Acquisition
from bonect.phantom.anatomy import draw_patient, render_anatomy
from bonect.phantom.artefacts import gibbs_ringing, motion_ghosts
from bonect.phantom.contrast import BoneCurve, classic_appearance
from bonect.phantom.generate import _grid_points, generate_case, patient_seed
from bonect.phantom.pathology import Pathology
from bonect.phantom.shapes import Tissue
from bonect.phantom.variation import (
    AGE_GROUPS,
    FAMILIES,
    FAMILY_NAMES,
    RANDOM_CONTRAST,
    draw_acquisition,
    draw_appearance,
    draw_family_patient,
    draw_technique,
    ranges_table,
)

COARSE = Acquisition("axial", (4.0, 4.0, 4.0))
SEEDS = range(80)


def _inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] - 1e-9 <= value <= bounds[1] + 1e-9


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def test_wide_and_shifted_are_disjoint_in_contrast_resolution_and_pathology() -> None:
    wide, shifted = FAMILIES["wide"], FAMILIES["shifted"]
    assert not set(wide.techniques) & set(shifted.techniques)
    assert not _overlap(wide.bone_gamma, shifted.bone_gamma)
    assert not _overlap(wide.pixel_mm, shifted.pixel_mm)
    assert not _overlap(wide.slice_mm, shifted.slice_mm)
    assert "craniotomy" in shifted.pathologies and "craniotomy" not in wide.pathologies


@pytest.mark.parametrize("family", ["wide", "randomised", "shifted"])
def test_every_draw_lies_within_its_family(family: str) -> None:
    ranges = FAMILIES[family]  # type: ignore[index]
    techniques, groups = set(), set()
    for seed in SEEDS:
        technique = draw_technique(seed, family)  # type: ignore[arg-type]
        techniques.add(technique)
        look = draw_appearance(seed, family, technique)  # type: ignore[arg-type]
        for curve in (look.cortical, look.cancellous):
            assert _inside(curve.gamma, ranges.bone_gamma)
            assert 0 < curve.at_one < curve.at_zero
        assert _inside(look.noise_sigma, ranges.noise)
        assert look.tissue[Tissue.SOFT] == 1.0 and look.tissue[Tissue.METAL] == 0.0
        acquisition = draw_acquisition(seed, family)  # type: ignore[arg-type]
        assert _inside(acquisition.spacing[0], ranges.slice_mm)
        assert _inside(acquisition.spacing[1], ranges.pixel_mm)
        params = draw_family_patient(seed, family)  # type: ignore[arg-type]
        assert all(abs(a) <= ranges.pose_deg for a in params.rotation_deg)
        group = next(
            g
            for g, a in AGE_GROUPS.items()
            if g in ranges.ages
            and _inside(params.scale, a.scale)
            and _inside(params.mineralisation, a.mineralisation)
            and _inside(params.skull_thickness_mm, a.vault_mm)
        )
        groups.add(group)
        drawn = params.pathology
        if drawn.craniotomy is not None:
            assert "craniotomy" in ranges.pathologies
        if drawn.haemorrhage is not None:
            assert "haemorrhage" in ranges.pathologies
        assert set(drawn.fillings).isdisjoint(params.missing_teeth)
    assert techniques == set(ranges.techniques)
    assert groups == set(ranges.ages)  # 80 patients meet every age group


def test_randomised_renders_half_its_patients_in_a_random_contrast_and_the_rest_as_wide() -> None:
    r = RANDOM_CONTRAST
    random = 0
    for seed in SEEDS:
        technique = draw_technique(seed, "randomised")
        assert technique == draw_technique(seed, "wide")
        assert draw_family_patient(seed, "randomised") == draw_family_patient(seed, "wide")
        assert draw_acquisition(seed, "randomised") == draw_acquisition(seed, "wide")
        look = draw_appearance(seed, "randomised", technique)
        wide = draw_appearance(seed, "wide", technique)
        if look == wide:
            continue
        random += 1
        # same scanner otherwise; every tissue but the dark ones drawn anew, bone still
        # darkening with density along the family's curve exponent
        assert replace(look, tissue=wide.tissue, cortical=wide.cortical,
                       cancellous=wide.cancellous) == wide  # fmt: skip
        for tissue in (Tissue.TEETH, Tissue.METAL, Tissue.SOFT):
            assert look.tissue[tissue] == wide.tissue[tissue]
        others = [v for t, v in look.tissue.items() if t not in (Tissue.TEETH, Tissue.METAL,
                                                                  Tissue.SOFT)]  # fmt: skip
        assert all(_inside(v, r.tissue) for v in others)
        assert _inside(look.cortical.at_zero, r.cortical)
        assert _inside(look.cancellous.at_zero, r.cancellous)
        for curve, before in ((look.cortical, wide.cortical), (look.cancellous, wide.cancellous)):
            assert _inside(curve.at_one / curve.at_zero, r.densest_share)
            assert curve.gamma == before.gamma
    assert 0.35 * len(SEEDS) <= random <= 0.65 * len(SEEDS)


def test_a_random_contrast_can_make_cortex_brighter_than_fat_and_brain() -> None:
    """What a technique table never does, and PETRA does: the point of the family."""
    brighter = 0
    for seed in SEEDS:
        technique = draw_technique(seed, "randomised")
        look = draw_appearance(seed, "randomised", technique)
        cortex = look.cortical.at_zero
        brighter += cortex > look.tissue[Tissue.FAT] and cortex > look.tissue[Tissue.BRAIN]
    assert brighter >= 3


def test_the_classic_family_is_the_original_phantom() -> None:
    seed = patient_seed(5, 3)
    assert draw_family_patient(seed, "classic") == draw_patient(seed)
    assert draw_appearance(seed, "classic", "ute") == classic_appearance("ute")
    assert draw_acquisition(seed, "classic") == Acquisition()
    with pytest.raises(ValueError, match="PETRA"):
        draw_appearance(seed, "classic", "petra")


def test_the_bone_curve_is_non_linear_between_its_ends() -> None:
    curve = BoneCurve(at_zero=1.0, at_one=0.2, gamma=2.0)
    m = np.array([0.0, 0.5, 1.0], dtype=np.float32)
    np.testing.assert_allclose(curve.signal(m), [1.0, 1.0 - 0.8 * 0.25, 0.2], rtol=1e-6)


def _labels(params: object) -> np.ndarray:
    grid = COARSE.grid()
    labels, _ = render_anatomy(params, _grid_points(grid), grid.shape, grid_affine=grid.affine)  # type: ignore[arg-type]
    return labels


def test_pathology_is_painted_where_it_is_drawn() -> None:
    base = replace(draw_patient(patient_seed(1, 1)), paediatric=False, mastoid_cells=0)
    plain = _labels(base)
    lesions = Pathology(
        fillings=(3, 14),
        craniotomy=(0.0, -0.3, 1.0, 28.0),
        plate=True,
        haemorrhage=(20.0, 10.0, 30.0, 14.0),
        mucus=(0.0, 0.8, 0.8, 0.0),
    )
    sick = _labels(replace(base, pathology=lesions))
    bone = (Tissue.CORTICAL, Tissue.CANCELLOUS)
    assert np.isin(sick, bone).sum() < np.isin(plain, bone).sum() - 50  # the defect
    assert (sick == Tissue.METAL).sum() > 0
    assert (sick == Tissue.BLOOD).sum() > 20
    assert (sick == Tissue.MUCUS).sum() > 20
    assert not np.isin(plain, (Tissue.METAL, Tissue.BLOOD, Tissue.MUCUS)).any()


def test_metal_blooms_on_mr_and_tops_the_ct() -> None:
    seed = next(
        s for s in range(200) if draw_family_patient(patient_seed(9, s), "wide").pathology.fillings
    )
    case = generate_case(9, seed, acquisition=Acquisition("axial", (2.0, 2.0, 2.0)),
                         ct_acquisition=None, family="wide")  # fmt: skip
    metal = case.labels.array == Tissue.METAL
    assert metal.any()
    soft = np.median(case.mr.array[case.labels.array == Tissue.SOFT])
    assert np.median(case.mr.array[metal]) < 0.35 * soft  # a void, noise floor and blur aside
    assert case.ct_on_mr.array[metal].max() > 2500


def test_ringing_overshoots_an_edge_and_motion_puts_ghosts_outside() -> None:
    image = np.zeros((1, 64, 64), dtype=np.float32)
    image[:, 20:44, 20:44] = 1.0
    rung = gibbs_ringing(image, axis=1, cut=0.4)
    assert rung.max() > 1.05 and rung.min() < -0.05
    ghosts = motion_ghosts(image, 1, 0.3, 6.0, np.random.default_rng(0))
    assert ghosts[:, :16].mean() > 0.01  # signal where there is no object
    assert np.array_equal(gibbs_ringing(image, axis=1, cut=0.0), image)


def test_the_field_of_view_can_cut_off_vertex_and_chin() -> None:
    full = Acquisition("axial", (4.0, 4.0, 4.0)).grid()
    cut = Acquisition("axial", (4.0, 4.0, 4.0), vertex_cut_mm=20.0, neck_cut_mm=60.0).grid()
    assert full.shape[0] - cut.shape[0] == 20  # (20 + 60) mm of 4 mm slices
    assert full.shape[1:] == cut.shape[1:]


def test_the_readme_table_is_the_code() -> None:
    readme = Path(__file__).parents[2] / "src" / "bonect" / "phantom" / "README.md"
    assert ranges_table() in readme.read_text(encoding="utf-8")


def test_the_cli_writes_a_shifted_patient_and_refuses_classic_petra(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "bonect.cli", "phantom"]
    done = subprocess.run(
        [*cli, str(tmp_path / "out"), "--family", "shifted", "--spacing", "4,4,4",
         "--ct-spacing", "4,4,4"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mr_files = list((tmp_path / "out").glob("*/dicom/MR/*"))
    assert mr_files
    refused = subprocess.run(
        [*cli, str(tmp_path / "no"), "--contrast", "petra"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "PETRA" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "no").exists()


def _family_choices(parser: argparse.ArgumentParser) -> dict[str, tuple[str, ...]]:
    """Every ``--family`` option of ``parser``'s subcommands, by subcommand."""
    found: dict[str, tuple[str, ...]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for option in sub._actions:
                    if option.dest == "family":
                        found[name] = tuple(option.choices or ())
    return found


def test_every_family_option_offers_exactly_the_phantom_families() -> None:
    """The CLIs spell the family names out (their ``--help`` imports no numpy), so a family
    added to the phantom and forgotten in one of them fails here."""
    from bonect.cli import build_parser as bonect_parser
    from bonect.trainer.cli import build_parser as trainer_parser

    found = {
        f"{program} {name}": choices
        for program, parser in (("bonect", bonect_parser()), ("bonect-trainer", trainer_parser()))
        for name, choices in _family_choices(parser).items()
    }
    assert set(found) >= {"bonect phantom", "bonect quality", "bonect-trainer import"}
    for where, choices in found.items():
        assert choices == FAMILY_NAMES, where
