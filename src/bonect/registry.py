"""The model registry, free of PyTorch: manifests, the ``promoted`` pointer, its history, versions.

A model is a folder: ``manifest.json`` (what it is: :class:`Manifest`) beside its weights, which
only :mod:`bonect.converter.model_folder` reads and writes (that module needs PyTorch; this one
must not, so that ``bonect-daemon status`` and the status page stay quick). The registry is a
folder of such model folders (``[storage].dir/models``), plus:

* ``promoted``: one line naming the folder in use. :func:`promote` rewrites it atomically
  (temporary file, fsync, rename, fsync of the folder); the daemon's model holder watches it
  and swaps the model in between jobs. No pointer, or an empty one: nothing is promoted (the
  daemon uses the classical map).
* ``promotions.log``: one JSON line per promotion (when, what, what before, why), so that
  :func:`rollback` knows what came before.

Every reader of the pointer goes through :class:`Pointer` or :func:`promoted_name` here.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from pydantic import BaseModel, Field, ValidationError

from bonect.audit import AuditEvent, AuditTrail
from bonect.errors import BonectError, ModelError
from bonect.hounsfield import HU_MAX, HU_MIN

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
"""The file that makes a folder a model folder."""

PROMOTED = "promoted"
"""The pointer: the name of the promoted model folder, one line."""

PROMOTIONS = "promotions.log"
"""The promotion history, one JSON object a line."""

PREPROCESSING_DEFAULT = "cube-1"
"""The preprocessing a new manifest declares unless told otherwise.

It is :data:`bonect.converter.preprocess.PREPROCESSING_VERSION`, written out because this module
may not import the converter (it would bring NumPy, SciPy and the converter into every reader
of the pointer); a test checks that the two agree.
"""


class RegistryError(BonectError):
    """A version that does not exist or exists already, or nothing to roll back to."""


class TrainingProvenance(BaseModel, frozen=True, extra="forbid"):
    """Where a model's training data came from (patients as hashed keys, never IDs)."""

    sites: tuple[str, ...] = ()
    patient_keys: tuple[str, ...] = ()
    slices: int = 0
    epochs: int = 0
    loss: str = "mae"
    command: str = ""


class _Scalable(Protocol):
    def __mul__(self, other: float, /) -> Self: ...

    def __add__(self, other: float, /) -> Self: ...


_T = TypeVar("_T", bound=_Scalable)


def input_channels(context_slices: int) -> int:
    """The network's input channels for `context_slices` neighbours on either side of a slice
    (0: 2D, one channel; 1: the 2.5D input of three); :attr:`Manifest.context_slices` inverts it."""
    return 2 * context_slices + 1


class Manifest(BaseModel, frozen=True, extra="forbid"):
    """What a model folder holds; enough to rebuild, run and judge the model."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    input_size: int = Field(ge=16)
    preprocessing_version: str = PREPROCESSING_DEFAULT
    hu_min: float = float(HU_MIN)
    hu_max: float = float(HU_MAX)
    planes: tuple[str, ...] = ("axial", "coronal", "sagittal")
    clinical_use: bool = False
    description: str = ""
    training: TrainingProvenance = TrainingProvenance()
    metrics: dict[str, float] = Field(default_factory=dict)
    created: str = ""

    @property
    def label(self) -> str:
        """Name and version, e.g. ``head-zte 2026.11``."""
        return f"{self.name} {self.version}"

    @property
    def context_slices(self) -> int:
        """Neighbouring slices on either side given to the network as channels (0: 2D input;
        1: the 2.5D input of three slices), from the network's ``in_channels``."""
        return (int(self.arguments.get("in_channels", 1)) - 1) // 2

    def to_hu(self, y: _T) -> _T:
        """Network output in [0, 1] (a tensor or an array) to HU."""
        return y * (self.hu_max - self.hu_min) + self.hu_min


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a model folder.

    Raises
    ------
    ModelError
        The folder has no manifest, or it cannot be read or is not a valid manifest.
    """
    path = folder / MANIFEST
    try:
        return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise ModelError(f"{folder}: not a model folder (no {MANIFEST})") from None
    except (OSError, ValueError, ValidationError) as exc:
        first = str(exc).splitlines()[0]
        raise ModelError(f"{path}: invalid manifest ({first})") from exc


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``folder`` (write it last: it makes the folder a model)."""
    text = json.dumps(manifest.model_dump(mode="json"), indent=2, sort_keys=True)
    path = folder / MANIFEST
    path.write_text(text + "\n", encoding="utf-8")
    return path


# -- the pointer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pointer:
    """What the ``promoted`` file said when read: the folder name and when it was written.

    The time tells a rewrite with the same name (an operator's retry) from no change.
    """

    name: str
    mtime_ns: int

    @classmethod
    def read(cls, registry: Path) -> Pointer | None:
        """The pointer of ``registry``; None when there is no ``promoted`` file."""
        try:
            with (registry / PROMOTED).open(encoding="utf-8") as f:
                name = f.read().strip()
                mtime_ns = os.fstat(f.fileno()).st_mtime_ns
        except FileNotFoundError:
            return None
        return cls(name, mtime_ns)


def promoted_name(registry: Path) -> str | None:
    """The name of the promoted folder, or None when nothing is promoted."""
    pointer = Pointer.read(registry)
    if pointer is None or not pointer.name:
        return None
    return pointer.name


def promoted_model(registry: Path) -> Path | None:
    """The folder of the promoted model, or None when nothing is promoted.

    Raises
    ------
    ModelError
        The pointer names something that is not a model folder of the registry.
    """
    name = promoted_name(registry)
    if name is None:
        return None
    folder = registry / name
    if not (folder / MANIFEST).is_file():
        raise ModelError(
            f"{registry / PROMOTED} names {name!r}, which is not a model folder in {registry}"
        )
    return folder


def _write_pointer(registry: Path, name: str) -> None:
    """Replace the pointer atomically and durably: a reader sees the old name or the new one."""
    tmp = registry / f".{PROMOTED}.tmp"
    with tmp.open("w", encoding="utf-8") as f:
        f.write(name + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(registry / PROMOTED)
    fd = os.open(registry, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- versions, promotion, roll back ----------------------------------------------------------


@dataclass(frozen=True)
class Version:
    """A model folder of the registry, and whether it is the promoted one."""

    name: str
    folder: Path
    manifest: Manifest
    promoted: bool


def versions(registry: Path) -> list[Version]:
    """Every version in the registry, oldest first (by manifest ``created``, then name).

    Folders whose manifest does not validate are left out with a warning.
    """
    if not registry.is_dir():
        return []
    current = promoted_name(registry)
    found = []
    for folder in sorted(registry.iterdir()):
        if folder.name.startswith(".") or not (folder / MANIFEST).is_file():
            continue
        try:
            manifest = read_manifest(folder)
        except ModelError as exc:
            logger.warning("%s", exc)
            continue
        found.append(Version(folder.name, folder, manifest, folder.name == current))
    return sorted(found, key=lambda v: (v.manifest.created, v.name))


@dataclass(frozen=True)
class Promotion:
    """One line of ``promotions.log``."""

    at: str
    promoted: str
    previous: str | None
    reason: str


def promote(
    registry: Path,
    name: str,
    *,
    reason: str,
    now: datetime | None = None,
    audit: AuditTrail | None = None,
    event: AuditEvent = AuditEvent.MODEL_PROMOTED,
) -> Path:
    """Make ``name`` the promoted version; the daemon swaps it in between jobs. With
    ``audit``, the promotion is also an audit record (``event``).

    Raises
    ------
    RegistryError
        ``name`` is not a model folder of the registry (the message lists the versions).
    ModelError
        Its manifest is not valid (refused here rather than in the daemon).
    """
    folder = registry / name
    if not (folder / MANIFEST).is_file():
        known = ", ".join(v.name for v in versions(registry)) or "none"
        raise RegistryError(f"no model version {name!r} in {registry} (versions: {known})")
    read_manifest(folder)
    previous = promoted_name(registry)
    _write_pointer(registry, name)
    at = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    entry = {"at": at, "promoted": name, "previous": previous, "reason": reason}
    with (registry / PROMOTIONS).open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")
    logger.info("promoted %s (was %s): %s", name, previous or "nothing", reason)
    if audit is not None:
        audit.record(
            event, reason=reason, detail={"promoted": name, "previous": previous, "at": at}
        )
    return folder


def promotion_history(registry: Path) -> list[Promotion]:
    """Every recorded promotion, oldest first; unreadable lines are skipped."""
    try:
        lines = (registry / PROMOTIONS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    history = []
    for line in lines:
        try:
            entry = json.loads(line)
            previous = entry.get("previous")
            history.append(
                Promotion(
                    at=str(entry["at"]),
                    promoted=str(entry["promoted"]),
                    previous=None if previous is None else str(previous),
                    reason=str(entry.get("reason", "")),
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s: skipping an unreadable line", registry / PROMOTIONS)
    return history


def rollback(
    registry: Path, *, now: datetime | None = None, audit: AuditTrail | None = None
) -> str:
    """Promote again the version that was promoted before the current one; returns its name.

    Raises
    ------
    RegistryError
        No earlier promotion of the current version is recorded.
    """
    current = promoted_name(registry)
    for entry in reversed(promotion_history(registry)):
        if entry.promoted == current and entry.previous:
            promote(
                registry,
                entry.previous,
                reason=f"roll back from {current}",
                now=now,
                audit=audit,
                event=AuditEvent.MODEL_ROLLED_BACK,
            )
            return entry.previous
    raise RegistryError(
        f"nothing to roll back to: {current or 'no model'} is promoted and no earlier promotion "
        "is recorded; promote a version by name with `bonect-trainer promote VERSION`"
    )
