"""DICOM UIDs: validation (a UID that may become part of a path) and derivation.

:func:`validate_uid` is the one check of a received UID: at most 64 characters, only digits and
dots, no empty components and no leading zeros (pydicom's ``UID.is_valid``). Anything else,
``"../../etc"`` included, raises :class:`InvalidUIDError`, so a hostile header can never name a
file outside the storage dir.
"""

from __future__ import annotations

import json
import re
import uuid

from pydicom.uid import UID

from bonect.errors import BonectError

_UID_CHARS = re.compile(r"[0-9.]+")
MAX_UID_LENGTH = 64

# Name-based (version 5) UUIDs of bonect's UIDs live in this namespace.
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:bonect:dicom-uid")


class InvalidUIDError(BonectError):
    """A UID is missing or not a valid DICOM UID (so it must never become part of a path)."""

    def __init__(self, keyword: str, value: object) -> None:
        super().__init__(f"{keyword} is not a valid UID: {str(value)[:80]!r}")
        self.keyword = keyword


def validate_uid(value: object, keyword: str) -> str:
    """Return ``value`` as a UID string, or raise :class:`InvalidUIDError`.

    A valid UID has at most 64 characters, only digits and dots, and passes pydicom's
    ``UID.is_valid`` (no empty components, no leading zeros). Trailing NUL or space padding
    (UI values are padded to even length) is removed.

    Parameters
    ----------
    value
        The value read from a header (``None`` when the element is absent).
    keyword
        The element's keyword, for the error message.
    """
    if not isinstance(value, str):
        raise InvalidUIDError(keyword, value)
    uid = value.rstrip("\x00 ")
    if not uid or len(uid) > MAX_UID_LENGTH or _UID_CHARS.fullmatch(uid) is None:
        raise InvalidUIDError(keyword, value)
    try:
        valid = UID(uid).is_valid  # UID() itself raises in pydicom's strict mode
    except ValueError as exc:
        raise InvalidUIDError(keyword, value) from exc
    if not valid:
        raise InvalidUIDError(keyword, value)
    return uid


def deterministic_uid(*parts: str) -> str:
    """A UID in the 2.25 form from a name-based UUID of ``parts``: same parts, same UID.

    Every UID bonect creates comes from here (sCT series and instances, rejection notes,
    phantom series), so that writing the same thing twice gives the very same objects.
    (pydicom's ``generate_uid(prefix=None, entropy_srcs=...)`` ignores ``entropy_srcs`` and
    returns a random UUID, so it cannot be used for this.)
    """
    name = json.dumps(list(parts), separators=(",", ":"))
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"
