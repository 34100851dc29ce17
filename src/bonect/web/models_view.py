"""What the models page shows: the model in use, every version with its report, the promotions.

Read from the registry folder (``[storage].dir/models``) through :mod:`bonect.registry`, which
needs no PyTorch. A version's report is what ``bonect-trainer augment`` copied into its folder:
``report.json`` (the decision), ``report.md`` (its tables, shown as tables) and the PNG figures.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bonect.config import MODEL_KEYWORDS, Config
from bonect.errors import ModelError
from bonect.registry import (
    Manifest,
    Promotion,
    promoted_name,
    promotion_history,
    read_manifest,
    versions,
)

logger = logging.getLogger(__name__)

FIGURE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.png")


@dataclass(frozen=True)
class Table:
    """A Markdown table of a report: its title (the section above it), header and rows."""

    title: str
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Report:
    """A version's evaluation report, as far as its folder holds one."""

    title: str = ""
    decision: str = ""
    tables: tuple[Table, ...] = ()
    figures: tuple[str, ...] = ()  # PNG file names in the version folder


@dataclass(frozen=True)
class VersionView:
    name: str
    manifest: Manifest
    promoted: bool
    report: Report


@dataclass(frozen=True)
class ModelsView:
    """The whole models page."""

    configured: str  # [converter] model as configured
    in_use: str  # what the running daemon says, or what the registry names
    manifest: Manifest | None  # of the model in use, if it is a model folder
    problem: str | None  # why the configured or promoted model cannot be shown
    versions: tuple[VersionView, ...] = ()
    history: tuple[Promotion, ...] = field(default_factory=tuple)


def markdown_tables(text: str) -> list[Table]:
    """The pipe tables of a Markdown text, each titled by the heading above it."""
    tables: list[Table] = []
    title, block = "", []
    for line in [*text.splitlines(), ""]:
        stripped = line.strip()
        if stripped.startswith("|"):
            block.append([cell.strip() for cell in stripped.strip("|").split("|")])
            continue
        if len(block) >= 2:
            header, *rows = (r for r in block if not all(set(c) <= set("-: ") for c in r))
            tables.append(Table(title, tuple(header), tuple(tuple(r) for r in rows)))
        block = []
        if stripped.startswith("#"):
            title = stripped.lstrip("#").strip()
    return tables


def read_report(folder: Path) -> Report:
    """The report kept in a version folder; empty parts where files are missing."""
    title = decision = ""
    try:
        data = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        title, decision = str(data.get("title", "")), str(data.get("decision", ""))
    except (OSError, ValueError, AttributeError) as exc:
        logger.debug("%s: no report.json (%s)", folder, exc)
    try:
        tables = tuple(markdown_tables((folder / "report.md").read_text(encoding="utf-8")))
    except OSError:
        tables = ()
    figures = tuple(sorted(p.name for p in folder.glob("*.png") if FIGURE_NAME.fullmatch(p.name)))
    return Report(title, decision, tables, figures)


def figure_path(registry: Path, version: str, name: str) -> Path | None:
    """The path of a figure of a known version, or None (names are checked, never joined raw)."""
    if not FIGURE_NAME.fullmatch(name):
        return None
    for known in versions(registry):
        if known.name == version:
            path = known.folder / name
            return path if path.is_file() else None
    return None


def models_view(config: Config, in_use_label: str | None) -> ModelsView:
    """The models page for ``config``; ``in_use_label`` from the running daemon, if known."""
    registry = config.model_registry
    spec = config.converter.model
    found = tuple(
        VersionView(v.name, v.manifest, v.promoted, read_report(v.folder))
        for v in versions(registry)
    )
    manifest: Manifest | None = None
    problem: str | None = None
    if spec == "auto":
        name = promoted_name(registry)
        promoted = [v for v in found if v.promoted]
        if promoted:
            manifest = promoted[0].manifest
            label = manifest.label
        elif name is not None:
            label = "the model loaded before"
            problem = f"the promoted {name!r} is not a valid model folder of {registry}"
        else:
            label = "classical (no model promoted)"
    elif spec in MODEL_KEYWORDS:
        label = spec
    else:
        try:
            manifest = read_manifest(Path(spec))
            label = manifest.label
        except ModelError as exc:
            label, problem = spec, str(exc)
    return ModelsView(
        configured=spec,
        in_use=in_use_label or label,
        manifest=manifest,
        problem=problem,
        versions=tuple(reversed(found)),  # newest first
        history=tuple(reversed(promotion_history(registry))),
    )
