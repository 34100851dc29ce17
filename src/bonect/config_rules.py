"""The ``[rules]`` section of the configuration: its schema, defaults and pattern validation.

The rules are configuration, not code. Every pattern is a Python regular expression searched
case-insensitively; an invalid one is a validation error naming its key
(``rules.convert.0.series_description: Value error, invalid regular expression ...``). What the
rules *do* with a series (its role) is decided by :mod:`bonect.rules`; this module is
the part :mod:`bonect.config` loads, so it imports nothing but pydantic.

The defaults match the bone-MR techniques of the paper (ZTE, UTE, PETRA, "black bone" GRE) as
whole words, and exclude the usual structural and survey series (so a "T1 MPRAGE" whose
protocol happens to be called "head-neck bone" is not converted).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

__all__ = [
    "DEFAULT_BONE_MR",
    "DEFAULT_NOT_BONE_MR",
    "DEFAULT_NOT_KEPT_CT",
    "ConvertRule",
    "KeepCtRule",
    "RulesConfig",
]

_WORD_START = r"(?<![a-z0-9])"
_WORD_END = r"(?![a-z0-9])"

DEFAULT_BONE_MR = _WORD_START + r"(zte|ute|petra|silenz|black[ _-]?bone|bone)" + _WORD_END
"""Bone-MR techniques as whole words: "ZTE bone ZTE", "UTE", "GRE black bone", "PETRA"."""

DEFAULT_NOT_BONE_MR = (
    _WORD_START
    + r"(t1w?|t2w?|t2\*|pdw?|mprage|mp2rage|flair|stir|dwi|dti|adc|swi|tof|"
    + r"locali[sz]er|scout|survey|calibration)"
    + _WORD_END
)
"""Structural, diffusion and survey series that mention "bone" without being bone MR."""

DEFAULT_NOT_KEPT_CT = (
    _WORD_START + r"(scout|topogram|locali[sz]er|surview|scanogram|dose report)" + _WORD_END
)
"""CT series of no use to the trainer: localizers and dose reports."""


def _check_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


class ConvertRule(BaseModel, frozen=True, extra="forbid"):
    """One way of recognising a bone-MR series to convert.

    The modality must be one of ``modalities``; then at least one of the SeriesDescription /
    ProtocolName / SequenceName patterns must match, and no field may match ``exclude``.
    """

    modalities: tuple[str, ...] = Field(default=("MR",), min_length=1)
    series_description: str | None = DEFAULT_BONE_MR
    protocol_name: str | None = DEFAULT_BONE_MR
    sequence_name: str | None = DEFAULT_BONE_MR
    exclude: str | None = DEFAULT_NOT_BONE_MR
    skip_derived: bool = False  # true: never convert DERIVED images (reformats, maps)

    @field_validator("series_description", "protocol_name", "sequence_name", "exclude")
    @classmethod
    def check_pattern(cls, value: str | None) -> str | None:
        return _check_pattern(value)


class KeepCtRule(BaseModel, frozen=True, extra="forbid"):
    """Which real CT series are kept for the trainer (paired later with bone MR)."""

    enabled: bool = True
    modalities: tuple[str, ...] = ("CT",)
    exclude: str | None = DEFAULT_NOT_KEPT_CT  # searched in SeriesDescription and ProtocolName

    @field_validator("exclude")
    @classmethod
    def check_pattern(cls, value: str | None) -> str | None:
        return _check_pattern(value)


class RulesConfig(BaseModel, frozen=True, extra="forbid"):
    """The ``[rules]`` section: what the daemon does with each settled series."""

    convert: tuple[ConvertRule, ...] = (ConvertRule(),)
    keep_ct: KeepCtRule = KeepCtRule()
    # the Manufacturer of bonect's own sCT (bonect.dicom.provenance.MANUFACTURER)
    output_manufacturer: str = Field(default="bonect", min_length=1)
