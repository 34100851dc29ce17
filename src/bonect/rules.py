"""Routing rules: which settled series are bone MR to convert, which CT to keep, the rest ignored.

The rules are configuration (``[rules]`` in ``config.toml``, whose schema is
:mod:`bonect.config_rules`); this module applies them. In order, a series is:

1. ``output`` when it is bonect's own synthetic CT coming back
   (:func:`bonect.dicom.provenance.is_own_sct`: ImageType DERIVED and our Manufacturer): never
   converted, never kept as a real CT;
2. ``convert`` when a ``[[rules.convert]]`` rule matches: its modality, and at least one of its
   SeriesDescription / ProtocolName / SequenceName patterns matching, and no field matching
   its ``exclude`` pattern;
3. ``keep_ct`` for a real CT (not a localizer), kept for the trainer;
4. ``ignore`` otherwise: acknowledged, then cleaned up by housekeeping.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from bonect.catalog.tables import Role
from bonect.config_rules import (
    DEFAULT_BONE_MR,
    DEFAULT_NOT_BONE_MR,
    DEFAULT_NOT_KEPT_CT,
    ConvertRule,
    KeepCtRule,
    RulesConfig,
)
from bonect.dicom.provenance import is_own_sct

__all__ = [
    "DEFAULT_BONE_MR",
    "DEFAULT_NOT_BONE_MR",
    "DEFAULT_NOT_KEPT_CT",
    "ConvertRule",
    "KeepCtRule",
    "Role",
    "RulesConfig",
    "SeriesFields",
    "classify",
    "convert_rule_matches",
    "is_output",
    "keep_ct_matches",
]


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


def _search(pattern: str | None, text: str) -> bool:
    return pattern is not None and re.search(pattern, text, re.IGNORECASE) is not None


def _is_derived(image_type: Sequence[str]) -> bool:
    return bool(image_type) and image_type[0].strip().upper() == "DERIVED"


def _modality_in(fields: SeriesFields, modalities: Sequence[str]) -> bool:
    return fields.modality.strip().upper() in {m.upper() for m in modalities}


def convert_rule_matches(rule: ConvertRule, fields: SeriesFields) -> bool:
    """Whether ``rule`` selects ``fields`` for conversion."""
    if not _modality_in(fields, rule.modalities):
        return False
    if rule.skip_derived and _is_derived(fields.image_type):
        return False
    texts = (fields.series_description, fields.protocol_name, fields.sequence_name)
    if any(_search(rule.exclude, text) for text in texts):
        return False
    patterns = (rule.series_description, rule.protocol_name, rule.sequence_name)
    return any(_search(pattern, text) for pattern, text in zip(patterns, texts, strict=True))


def keep_ct_matches(rule: KeepCtRule, fields: SeriesFields) -> bool:
    """Whether ``fields`` describe a real CT the trainer keeps (not a localizer or report)."""
    if not rule.enabled or not _modality_in(fields, rule.modalities):
        return False
    if any(value.strip().upper() == "LOCALIZER" for value in fields.image_type):
        return False
    texts = (fields.series_description, fields.protocol_name)
    return not any(_search(rule.exclude, text) for text in texts)


def is_output(rules: RulesConfig, fields: SeriesFields) -> bool:
    """Whether ``fields`` describe a series bonect computed (its synthetic CT)."""
    return is_own_sct(
        fields.manufacturer, fields.image_type, our_manufacturer=rules.output_manufacturer
    )


def classify(rules: RulesConfig, fields: SeriesFields) -> Role:
    """The role of a series: ``output``, ``convert``, ``keep_ct`` or ``ignore``."""
    if is_output(rules, fields):
        return Role.OUTPUT
    if any(convert_rule_matches(rule, fields) for rule in rules.convert):
        return Role.CONVERT
    if keep_ct_matches(rules.keep_ct, fields):
        return Role.KEEP_CT
    return Role.IGNORE
