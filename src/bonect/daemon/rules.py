"""Routing rules: which settled series are bone MR to convert, which CT to keep, the rest ignored.

The rules are configuration (``[rules]`` in ``config.toml``), not code. Every pattern is a
Python regular expression searched case-insensitively; an invalid one is a validation error
naming its key (``rules.convert.0.series_description: Value error, invalid regular
expression ...``). In order, a series is:

1. ``output`` when it is bonect's own synthetic CT coming back (ImageType DERIVED and our
   Manufacturer): never converted, never kept as a real CT;
2. ``convert`` when a ``[[rules.convert]]`` rule matches: its modality, and at least one of its
   SeriesDescription / ProtocolName / SequenceName patterns matching, and no field matching
   its ``exclude`` pattern;
3. ``keep_ct`` for a real CT (not a localizer), kept for the trainer;
4. ``ignore`` otherwise: acknowledged, then cleaned up by housekeeping.

The defaults match the bone-MR techniques of the paper (ZTE, UTE, PETRA, "black bone" GRE) as
whole words, and exclude the usual structural and survey series (so a "T1 MPRAGE" whose
protocol happens to be called "head-neck bone" is not converted).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from pydantic import BaseModel, Field, field_validator

from bonect.catalog.models import Role

__all__ = [
    "DEFAULT_BONE_MR",
    "DEFAULT_NOT_BONE_MR",
    "ConvertRule",
    "KeepCtRule",
    "Role",
    "RulesConfig",
    "SeriesFields",
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


class SeriesFields(Protocol):
    """The header fields of a series the rules look at (``SeriesRecord`` has them all)."""

    @property
    def modality(self) -> str: ...
    @property
    def series_description(self) -> str: ...
    @property
    def protocol_name(self) -> str: ...
    @property
    def sequence_name(self) -> str: ...
    @property
    def image_type(self) -> Sequence[str]: ...
    @property
    def manufacturer(self) -> str: ...


def _check_pattern(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {value!r}: {exc}") from exc
    return value


def _search(pattern: str | None, text: str) -> bool:
    return pattern is not None and re.search(pattern, text, re.IGNORECASE) is not None


class ConvertRule(BaseModel, frozen=True, extra="forbid"):
    """One way of recognising a bone-MR series to convert."""

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

    def matches(self, fields: SeriesFields) -> bool:
        """Whether this rule selects ``fields`` for conversion."""
        if fields.modality.strip().upper() not in {m.upper() for m in self.modalities}:
            return False
        if self.skip_derived and _is_derived(fields.image_type):
            return False
        texts = (fields.series_description, fields.protocol_name, fields.sequence_name)
        if any(_search(self.exclude, text) for text in texts):
            return False
        patterns = (self.series_description, self.protocol_name, self.sequence_name)
        return any(_search(pattern, text) for pattern, text in zip(patterns, texts, strict=True))


class KeepCtRule(BaseModel, frozen=True, extra="forbid"):
    """Which real CT series are kept for the trainer (paired later with bone MR)."""

    enabled: bool = True
    modalities: tuple[str, ...] = ("CT",)
    exclude: str | None = DEFAULT_NOT_KEPT_CT  # searched in SeriesDescription and ProtocolName

    @field_validator("exclude")
    @classmethod
    def check_pattern(cls, value: str | None) -> str | None:
        return _check_pattern(value)

    def matches(self, fields: SeriesFields) -> bool:
        if not self.enabled:
            return False
        if fields.modality.strip().upper() not in {m.upper() for m in self.modalities}:
            return False
        if any(value.strip().upper() == "LOCALIZER" for value in fields.image_type):
            return False
        texts = (fields.series_description, fields.protocol_name)
        return not any(_search(self.exclude, text) for text in texts)


def _is_derived(image_type: Sequence[str]) -> bool:
    return bool(image_type) and image_type[0].strip().upper() == "DERIVED"


class RulesConfig(BaseModel, frozen=True, extra="forbid"):
    """The ``[rules]`` section: what the daemon does with each settled series."""

    convert: tuple[ConvertRule, ...] = (ConvertRule(),)
    keep_ct: KeepCtRule = KeepCtRule()
    output_manufacturer: str = Field(default="bonect", min_length=1)

    def is_output(self, fields: SeriesFields) -> bool:
        """Whether ``fields`` describe a series bonect computed (its synthetic CT)."""
        ours = fields.manufacturer.strip().lower() == self.output_manufacturer.strip().lower()
        return ours and _is_derived(fields.image_type)

    def classify(self, fields: SeriesFields) -> Role:
        """The role of a series: ``output``, ``convert``, ``keep_ct`` or ``ignore``."""
        if self.is_output(fields):
            return Role.OUTPUT
        if any(rule.matches(fields) for rule in self.convert):
            return Role.CONVERT
        if self.keep_ct.matches(fields):
            return Role.KEEP_CT
        return Role.IGNORE
