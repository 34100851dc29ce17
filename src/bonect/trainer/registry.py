"""The model registry as the trainer sees it: publish versions, promote one, roll back.

The registry is ``[storage].dir/models``: one folder per version (``manifest.json`` +
``weights.safetensors`` + the report that judged it) and a ``promoted`` file naming the version
in use, which the daemon watches. Promotion rewrites that file atomically (temporary file, then
rename) and appends a line to ``promotions.log``, so a roll back knows what came before.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from torch import nn

from bonect.converter.model_folder import MANIFEST, PROMOTED, Manifest, read_manifest, save_model
from bonect.errors import BonectError, ModelError

logger = logging.getLogger(__name__)

PROMOTIONS = "promotions.log"


class RegistryError(BonectError):
    """A version that does not exist, or nothing to roll back to."""


@dataclass(frozen=True)
class Version:
    name: str
    folder: Path
    manifest: Manifest
    promoted: bool


def publish(registry: Path, name: str, manifest: Manifest, network: nn.Module) -> Path:
    """Write a new version folder (weights first, manifest last); never overwrites one."""
    folder = registry / name
    if folder.exists():
        raise RegistryError(f"{folder}: a version of that name exists already")
    partial = registry / f".{name}.partial"
    save_model(partial, manifest, network)
    partial.rename(folder)
    logger.info("published model version %s", name)
    return folder


def promoted_name(registry: Path) -> str | None:
    try:
        return (registry / PROMOTED).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def versions(registry: Path) -> list[Version]:
    """Every version in the registry, oldest first."""
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


def promote(registry: Path, name: str, *, reason: str) -> Path:
    """Make `name` the promoted version; the daemon swaps it in between jobs."""
    folder = registry / name
    if not (folder / MANIFEST).is_file():
        known = ", ".join(v.name for v in versions(registry)) or "none"
        raise RegistryError(f"no model version {name!r} in {registry} (versions: {known})")
    read_manifest(folder)  # refuse a broken manifest here, not in the daemon
    previous = promoted_name(registry)
    tmp = registry / f".{PROMOTED}.tmp"
    tmp.write_text(name + "\n", encoding="utf-8")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(registry / PROMOTED)
    entry = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "promoted": name,
        "previous": previous,
        "reason": reason,
    }
    with (registry / PROMOTIONS).open("a", encoding="utf-8") as log:
        log.write(json.dumps(entry) + "\n")
    logger.info("promoted %s (was %s): %s", name, previous or "nothing", reason)
    return folder


def promotion_history(registry: Path) -> list[dict[str, str | None]]:
    try:
        lines = (registry / PROMOTIONS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    history = []
    for line in lines:
        try:
            history.append(json.loads(line))
        except ValueError:
            continue
    return history


def rollback(registry: Path) -> str:
    """Promote again the version that was promoted before the current one."""
    current = promoted_name(registry)
    for entry in reversed(promotion_history(registry)):
        if entry.get("promoted") == current and entry.get("previous"):
            previous = str(entry["previous"])
            promote(registry, previous, reason=f"roll back from {current}")
            return previous
    raise RegistryError(
        f"nothing to roll back to: {current or 'no model'} is promoted and no earlier promotion "
        "is recorded; promote a version by name with `bonect-trainer promote VERSION`"
    )
