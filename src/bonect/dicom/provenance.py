"""Provenance: the one answer to "is this series bonect's own synthetic CT?".

bonect labels every sCT series in-band (see :mod:`bonect.converter.dicom_writer`): the
Manufacturer (0008,0070) is :data:`MANUFACTURER` and the first value of ImageType (0008,0008)
is ``DERIVED``. When such a series comes back (a PACS forwarding everything it stores, a
modality re-sending a study), the daemon's rules give it the role ``output`` (never converted
again, never kept as a real CT), the trainer never pairs it with an MR, and the converter
refuses to convert it. All of them ask :func:`is_own_sct`.

Both conditions are needed: the phantom's "acquired" series carry another Manufacturer, and a
scanner vendor's derived series (a reformat, a map) carry their own.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

MANUFACTURER = "bonect"
"""Manufacturer (0008,0070) of every series bonect computes; the phantom uses another name."""

MANUFACTURER_MODEL_NAME = "bonect synthetic CT"
"""ManufacturerModelName (0008,1090) of every sCT series."""


def _image_type_values(image_type: Sequence[str] | str) -> list[str]:
    if isinstance(image_type, str):  # as the catalog stores it: values joined by "\"
        image_type = image_type.split("\\")
    return [str(value).strip().upper() for value in image_type]


def is_own_sct(
    manufacturer: str,
    image_type: Sequence[str] | str,
    *,
    our_manufacturer: str = MANUFACTURER,
) -> bool:
    """Whether a series with this Manufacturer and ImageType is bonect's own synthetic CT.

    Parameters
    ----------
    manufacturer
        The series' Manufacturer; compared with ``our_manufacturer`` ignoring case and
        surrounding spaces.
    image_type
        Its ImageType values, or the values joined by ``\\``; the first must be ``DERIVED``.
    our_manufacturer
        The name bonect writes (``[rules] output_manufacturer``); an empty name matches nothing.
    """
    ours = our_manufacturer.strip().lower()
    if not ours or str(manufacturer).strip().lower() != ours:
        return False
    values = _image_type_values(image_type)
    return bool(values) and values[0] == "DERIVED"


def dataset_is_own_sct(ds: Dataset, *, our_manufacturer: str = MANUFACTURER) -> bool:
    """:func:`is_own_sct` of a header (absent Manufacturer or ImageType: not ours)."""
    image_type = ds.get("ImageType") or ()
    if isinstance(image_type, str):  # a single value
        image_type = [image_type]
    return is_own_sct(
        str(ds.get("Manufacturer") or ""),
        [str(value) for value in image_type],
        our_manufacturer=our_manufacturer,
    )
