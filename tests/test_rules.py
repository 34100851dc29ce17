"""Routing rules: phantom bone MR is converted, T1 ignored, real CT kept, our sCT recognised."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from datetime import date, time

import numpy as np
import pytest
from pydantic import ValidationError

from bonect.config_rules import ConvertRule, KeepCtRule, RulesConfig
from bonect.converter.volume import Volume
from bonect.dicom.header import InstanceHeader, read_header
from bonect.dicom.provenance import MANUFACTURER
from bonect.phantom.dicom import PatientInfo, StudyInfo, acquired_series_datasets
from bonect.rules import Role, classify

RULES = RulesConfig()


@dataclass(frozen=True)
class Fields:
    modality: str = "MR"
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY")
    manufacturer: str = "Vendor"


def phantom_header(modality: str, description: str, contrast: str | None = None) -> InstanceHeader:
    """The catalog's view of the first instance of a (tiny) phantom series."""
    volume = Volume(np.ones((3, 8, 8), dtype=np.float32), np.diag([2.0, 1.0, 1.0, 1.0]))
    datasets = acquired_series_datasets(
        volume,
        modality="MR" if modality == "MR" else "CT",
        patient=PatientInfo("PHANTOM^P001", "P001"),
        study=StudyInfo("1.2.826.0.1.3680043.8.498.1", date(2026, 1, 5), time(9, 30)),
        series_number=3,
        series_description=description,
        frame_of_reference_uid="1.2.826.0.1.3680043.8.498.2",
        series_uid="1.2.826.0.1.3680043.8.498.3",
        mr_contrast=contrast,
    )
    return read_header(datasets[0])


@pytest.mark.parametrize(
    ("contrast", "description"),
    [
        ("zte", "ZTE bone ZTE"),
        ("ute", "UTE bone UTE"),
        ("gre", "GRE black bone bone GRE"),
        ("petra", "PETRA"),
        ("ute", "UTE"),
        ("gre", "GRE black bone"),
    ],
)
def test_phantom_bone_mr_is_converted(contrast: str, description: str) -> None:
    assert classify(RULES, phantom_header("MR", description, contrast)) is Role.CONVERT


def test_phantom_t1_is_ignored_although_its_protocol_says_bone() -> None:
    t1 = phantom_header("MR", "T1 MPRAGE", "T1 MPRAGE")
    assert "bone" in t1.protocol_name  # the phantom names every MR protocol "... head-neck bone"
    assert classify(RULES, t1) is Role.IGNORE


def test_phantom_ct_is_kept() -> None:
    assert classify(RULES, phantom_header("CT", "CT head neck bone kernel")) is Role.KEEP_CT


def test_our_synthetic_ct_is_output_never_kept_or_converted() -> None:
    sct = Fields("CT", "Synthetic CT from ZTE bone", image_type=("DERIVED", "SECONDARY"))
    assert classify(RULES, replace(sct, manufacturer=MANUFACTURER)) is Role.OUTPUT
    assert classify(RULES, replace(sct, manufacturer="BONECT ")) is Role.OUTPUT
    # someone else's derived CT is still a CT, and so is a CT that only claims our name
    assert classify(RULES, sct) is Role.KEEP_CT
    original = replace(sct, manufacturer=MANUFACTURER, image_type=("ORIGINAL", "PRIMARY"))
    assert classify(RULES, original) is Role.KEEP_CT


def test_the_rules_default_to_the_manufacturer_our_writer_writes() -> None:
    assert RULES.output_manufacturer == MANUFACTURER


@pytest.mark.parametrize(
    "fields",
    [
        Fields(series_description="zte_bone_sag"),
        Fields(protocol_name="Head PETRA 0.8mm"),
        Fields(sequence_name="ute3d", series_description="UTE"),
        Fields(series_description="BlackBone 3D"),
        Fields(series_description="oZTEo", sequence_name="ZTE"),
    ],
)
def test_bone_mr_names(fields: Fields) -> None:
    assert classify(RULES, fields) is Role.CONVERT


@pytest.mark.parametrize(
    "fields",
    [
        Fields(series_description="T1 MPRAGE"),
        Fields(series_description="COMPUTED map"),  # "ute" inside a word
        Fields(series_description="T2 FLAIR bone marrow"),
        Fields(series_description="Localizer", protocol_name="ZTE bone"),
        Fields("PT", series_description="ZTE bone"),  # wrong modality
        Fields("CT", series_description="Topogram 0.6"),
        Fields("CT", series_description="Head", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        Fields("SR", series_description="Dose report"),
    ],
)
def test_other_series_are_ignored(fields: Fields) -> None:
    assert classify(RULES, fields) is Role.IGNORE


def test_rules_from_toml() -> None:
    text = r"""
    output_manufacturer = "bonect"

    [[convert]]
    modalities = ["MR"]
    series_description = '3d_?gre_?bb'
    protocol_name = '(?i)silent skull'
    sequence_name = 'nothing-matches-this'
    exclude = 'test'
    skip_derived = true

    [keep_ct]
    enabled = false
    """
    rules = RulesConfig.model_validate(tomllib.loads(text))
    assert classify(rules, Fields(series_description="3D_GRE_BB")) is Role.CONVERT
    assert classify(rules, Fields(protocol_name="SILENT skull")) is Role.CONVERT
    assert classify(rules, Fields(series_description="3D GRE BB test")) is Role.IGNORE
    derived = Fields(series_description="3DGREBB", image_type=("DERIVED", "SECONDARY", "MPR"))
    assert classify(rules, derived) is Role.IGNORE
    assert classify(rules, Fields("MR", "ZTE")) is Role.IGNORE  # only the rule above
    assert classify(rules, Fields("CT", "Head")) is Role.IGNORE  # keep_ct disabled


def test_a_rule_field_set_to_none_is_not_looked_at() -> None:
    rules = RulesConfig(convert=(ConvertRule(series_description=None, protocol_name=None),))
    assert classify(rules, Fields(series_description="ZTE")) is Role.IGNORE
    assert classify(rules, Fields(sequence_name="ZTE")) is Role.CONVERT


def test_invalid_regex_is_a_validation_error_naming_the_key() -> None:
    with pytest.raises(ValidationError) as caught:
        RulesConfig.model_validate(
            {"convert": [{}, {"protocol_name": "(zte"}], "keep_ct": {"exclude": "[a-"}}
        )
    errors = {".".join(map(str, e["loc"])): e["msg"] for e in caught.value.errors()}
    assert set(errors) == {"convert.1.protocol_name", "keep_ct.exclude"}
    assert "invalid regular expression '(zte'" in errors["convert.1.protocol_name"]


def test_unknown_keys_are_refused() -> None:
    with pytest.raises(ValidationError, match=r"convert\.0\.description"):
        RulesConfig.model_validate({"convert": [{"description": "zte"}]})
    with pytest.raises(ValidationError):
        KeepCtRule.model_validate({"modality": "CT"})


def test_rules_are_frozen() -> None:
    with pytest.raises(ValidationError):
        RULES.output_manufacturer = "other"  # type: ignore[misc]
