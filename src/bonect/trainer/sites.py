"""Training sites on disk: each a folder of MR/CT pairs, imported from outside or harvested.

Layout under the trainer folder (``[storage].dir/trainer``)::

    sites/<site>/site.json                 name, format, where it came from, when
    sites/<site>/pairs/<case>/pair.json    patient key, provenance, file names
    sites/<site>/pairs/<case>/mr.nii.gz    bone MR
    sites/<site>/pairs/<case>/ct.nii.gz    CT as acquired (own grid), or already on the MR grid

A pair's key is ``<site>/<case>``. Case names of DICOM imports and of the local site are hashes
of series UIDs, never patient IDs; patient keys are SHA-256 hashes (the catalog's for DICOM and
local pairs). Registration results live beside the pair (see :mod:`bonect.trainer.pairs`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bonect.converter.volume import Volume, write_nifti
from bonect.errors import BonectError

logger = logging.getLogger(__name__)

SITE_FILE = "site.json"
PAIR_FILE = "pair.json"
MR_FILE = "mr.nii.gz"
CT_FILE = "ct.nii.gz"
FORMATS = ("synthrad", "nifti", "dicom", "phantom")
LOCAL_SITE = "local"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class SiteError(BonectError):
    """A site or pair that does not exist or cannot be used; the message is one line."""


def check_name(name: str, what: str = "site") -> str:
    """A site or case name safe as a folder name (letters, digits, ``. _ -``)."""
    if not _NAME.match(name):
        raise SiteError(
            f"{what} name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            "(starting with a letter or digit)"
        )
    return name


def hashed_key(*parts: str) -> str:
    """A pseudonymous key: SHA-256 (hex) of the parts joined by a backslash."""
    return hashlib.sha256("\\".join(parts).encode()).hexdigest()


@dataclass(frozen=True)
class Pair:
    """One MR/CT pair of a site, as stored."""

    site: str
    case: str
    folder: Path
    patient_key: str
    ct_on_mr_grid: bool  # the CT is already resampled onto the MR grid (SynthRAD)
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.site}/{self.case}"

    @property
    def mr(self) -> Path:
        return self.folder / MR_FILE

    @property
    def ct(self) -> Path:
        return self.folder / CT_FILE


@dataclass(frozen=True)
class Site:
    """A site: its name, where it came from, and its folder."""

    name: str
    format: str
    source: str
    imported_at: str
    folder: Path

    @property
    def pairs_folder(self) -> Path:
        return self.folder / "pairs"


class SiteStore:
    """The sites under one trainer folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sites_folder = root / "sites"

    def sites(self) -> list[Site]:
        """Every site, by name."""
        if not self.sites_folder.is_dir():
            return []
        found = []
        for folder in sorted(self.sites_folder.iterdir()):
            if (folder / SITE_FILE).is_file():
                found.append(self._read_site(folder))
        return found

    def site(self, name: str) -> Site:
        """The site called `name`; a clear error listing the known ones otherwise."""
        folder = self.sites_folder / check_name(name)
        if not (folder / SITE_FILE).is_file():
            known = ", ".join(s.name for s in self.sites()) or "none yet"
            raise SiteError(f"unknown site {name!r} (known: {known}); see `bonect-trainer sites`")
        return self._read_site(folder)

    def create_site(self, name: str, fmt: str, source: str) -> Site:
        """Create (or reopen, when the format matches) a site."""
        check_name(name)
        folder = self.sites_folder / name
        if (folder / SITE_FILE).is_file():
            site = self._read_site(folder)
            if site.format != fmt:
                raise SiteError(
                    f"site {name!r} holds {site.format} data; import {fmt} data as another site"
                )
            return site
        folder.mkdir(parents=True, exist_ok=True)
        site = Site(
            name=name,
            format=fmt,
            source=source,
            imported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            folder=folder,
        )
        record = {"name": name, "format": fmt, "source": source, "imported_at": site.imported_at}
        write_json(folder / SITE_FILE, record)
        return site

    def pairs(self, site: Site) -> list[Pair]:
        """The pairs of a site, by case name; unreadable pair folders are skipped with a warning."""
        if not site.pairs_folder.is_dir():
            return []
        found = []
        for folder in sorted(site.pairs_folder.iterdir()):
            if not folder.is_dir():
                continue
            try:
                found.append(self._read_pair(site.name, folder))
            except SiteError as exc:
                logger.warning("%s", exc)
        return found

    def all_pairs(self, names: Sequence[str]) -> Iterator[Pair]:
        for name in names:
            yield from self.pairs(self.site(name))

    def add_pair(
        self,
        site: Site,
        case: str,
        *,
        patient_key: str,
        mr: Path | Volume,
        ct: Path | Volume,
        ct_on_mr_grid: bool,
        provenance: dict[str, Any] | None = None,
    ) -> Pair:
        """Store one pair (files copied, volumes written as NIfTI); replaces an earlier copy."""
        folder = site.pairs_folder / check_name(case, "case")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        for source, name in ((mr, MR_FILE), (ct, CT_FILE)):
            if isinstance(source, Volume):
                write_nifti(source, partial / name)
            else:
                shutil.copyfile(source, partial / name)
        record = {
            "case": case,
            "patient_key": patient_key,
            "ct_on_mr_grid": ct_on_mr_grid,
            "provenance": provenance or {},
        }
        write_json(partial / PAIR_FILE, record)
        if folder.exists():
            shutil.rmtree(folder)
        partial.rename(folder)
        return self._read_pair(site.name, folder)

    def _read_site(self, folder: Path) -> Site:
        data = read_json(folder / SITE_FILE)
        try:
            return Site(
                name=str(data["name"]),
                format=str(data["format"]),
                source=str(data.get("source", "")),
                imported_at=str(data.get("imported_at", "")),
                folder=folder,
            )
        except KeyError as exc:
            raise SiteError(f"{folder / SITE_FILE}: missing {exc}") from None

    def _read_pair(self, site: str, folder: Path) -> Pair:
        data = read_json(folder / PAIR_FILE)
        for name in (MR_FILE, CT_FILE):
            if not (folder / name).is_file():
                raise SiteError(f"pair {site}/{folder.name}: {name} is missing")
        try:
            return Pair(
                site=site,
                case=str(data["case"]),
                folder=folder,
                patient_key=str(data["patient_key"]),
                ct_on_mr_grid=bool(data.get("ct_on_mr_grid", False)),
                provenance=dict(data.get("provenance", {})),
            )
        except KeyError as exc:
            raise SiteError(f"{folder / PAIR_FILE}: missing {exc}") from None


def read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object; :class:`SiteError` with one line when missing or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise SiteError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(data, dict):
        raise SiteError(f"{path}: not a JSON object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
