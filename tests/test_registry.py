"""The torch-free model registry: manifests, the ``promoted`` pointer, its history, versions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bonect.audit import AuditTrail
from bonect.converter.preprocess import PREPROCESSING_VERSION
from bonect.errors import ModelError
from bonect.registry import (
    MANIFEST,
    PREPROCESSING_DEFAULT,
    PROMOTED,
    PROMOTIONS,
    Manifest,
    Pointer,
    RegistryError,
    TrainingProvenance,
    input_channels,
    promote,
    promoted_model,
    promoted_name,
    promotion_history,
    read_manifest,
    rollback,
    versions,
    write_manifest,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _version(registry: Path, name: str, created: str = "") -> Path:
    """A model folder as far as the registry cares: a manifest (no weights needed here)."""
    folder = registry / name
    folder.mkdir(parents=True)
    manifest = Manifest(
        name="head", version=name, architecture="light_unet", input_size=32, created=created
    )
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


def test_importing_the_registry_does_not_import_torch() -> None:
    code = (
        "import sys, bonect.registry; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('bonect.converter')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("context", [0, 1, 2, 3])
def test_the_manifest_reads_back_the_context_its_input_channels_came_from(context: int) -> None:
    arguments = {"in_channels": input_channels(context)} if context else {}  # 2D: left out
    manifest = Manifest(name="a", version="1", architecture="x", input_size=16, arguments=arguments)
    assert manifest.context_slices == context
    assert input_channels(context) == 2 * context + 1  # the slice and its neighbours


def test_the_manifest_default_is_the_converters_preprocessing() -> None:
    assert PREPROCESSING_DEFAULT == PREPROCESSING_VERSION
    assert Manifest(name="a", version="1", architecture="x", input_size=16).preprocessing_version


def test_a_manifest_round_trips_and_maps_to_hu(registry: Path) -> None:
    manifest = Manifest(
        name="head",
        version="2026.11",
        architecture="light_unet",
        arguments={"base_filters": 16},
        input_size=224,
        training=TrainingProvenance(sites=("external", "local"), epochs=3),
        metrics={"local_cv_mae": 61.5},
    )
    write_manifest(registry, manifest)
    assert read_manifest(registry) == manifest
    assert manifest.label == "head 2026.11"
    assert manifest.to_hu(0.0) == -1024.0 and manifest.to_hu(1.0) == 3071.0


@pytest.mark.parametrize(
    ("arguments", "context"), [({}, 0), ({"in_channels": 3}, 1), ({"in_channels": 5}, 2)]
)
def test_the_context_slices_follow_the_networks_input_channels(
    arguments: dict[str, int], context: int
) -> None:
    manifest = Manifest(
        name="a", version="1", architecture="light_unet", arguments=arguments, input_size=16
    )
    assert manifest.context_slices == context


def test_a_bad_manifest_names_its_file(registry: Path) -> None:
    with pytest.raises(ModelError, match="not a model folder"):
        read_manifest(registry)
    (registry / MANIFEST).write_text(json.dumps({"name": "x"}), encoding="utf-8")
    with pytest.raises(ModelError, match=f"{MANIFEST}: invalid manifest"):
        read_manifest(registry)


def test_no_pointer_or_an_empty_one_is_nothing_promoted(registry: Path) -> None:
    assert Pointer.read(registry) is None
    assert promoted_name(registry) is None and promoted_model(registry) is None
    (registry / PROMOTED).write_text("\n", encoding="utf-8")
    assert Pointer.read(registry) == Pointer("", (registry / PROMOTED).stat().st_mtime_ns)
    assert promoted_name(registry) is None and promoted_model(registry) is None


def test_a_pointer_to_no_model_folder_is_an_error(registry: Path) -> None:
    (registry / PROMOTED).write_text("gone\n", encoding="utf-8")
    assert promoted_name(registry) == "gone"
    with pytest.raises(ModelError, match="names 'gone', which is not a model folder"):
        promoted_model(registry)


def test_promote_rewrites_the_pointer_and_records_why(registry: Path) -> None:
    _version(registry, "v1")
    _version(registry, "v2")
    assert promote(registry, "v1", reason="first", now=T0) == registry / "v1"
    promote(registry, "v2", reason="better", now=T0)
    assert (registry / PROMOTED).read_text(encoding="utf-8") == "v2\n"
    assert Pointer.read(registry) is not None and promoted_model(registry) == registry / "v2"
    assert [(p.promoted, p.previous, p.reason) for p in promotion_history(registry)] == [
        ("v1", None, "first"),
        ("v2", "v1", "better"),
    ]
    assert promotion_history(registry)[0].at == "2026-03-01T12:00:00+00:00"
    assert sorted(p.name for p in registry.iterdir()) == [PROMOTED, PROMOTIONS, "v1", "v2"]


def test_promote_refuses_what_is_not_a_valid_version(registry: Path) -> None:
    _version(registry, "v1")
    with pytest.raises(RegistryError, match=r"no model version 'v9' .*\(versions: v1\)"):
        promote(registry, "v9", reason="")
    (registry / "v1" / MANIFEST).write_text("{", encoding="utf-8")
    with pytest.raises(ModelError, match="invalid manifest"):
        promote(registry, "v1", reason="")
    assert not (registry / PROMOTED).exists()


def test_rollback_promotes_again_what_came_before(registry: Path) -> None:
    for name in ("v1", "v2", "v3"):
        _version(registry, name)
    with pytest.raises(RegistryError, match="nothing to roll back to: no model"):
        rollback(registry)
    promote(registry, "v1", reason="first")
    with pytest.raises(RegistryError, match="nothing to roll back to: v1"):
        rollback(registry)
    for name in ("v2", "v3"):
        promote(registry, name, reason="newer")
    assert rollback(registry) == "v2"
    assert promoted_name(registry) == "v2"
    assert promotion_history(registry)[-1].reason == "roll back from v3"
    assert rollback(registry) == "v3"  # a roll back is a promotion: rolling back undoes it


def test_an_unreadable_history_line_is_skipped(registry: Path) -> None:
    _version(registry, "v1")
    (registry / PROMOTIONS).write_text("not json\n", encoding="utf-8")
    promote(registry, "v1", reason="first")
    assert [p.promoted for p in promotion_history(registry)] == ["v1"]


def test_versions_oldest_first_skipping_broken_and_hidden_folders(registry: Path) -> None:
    assert versions(registry / "nowhere") == []
    _version(registry, "b", created="2026-01-01T00:00:00+00:00")
    _version(registry, "a", created="2026-02-01T00:00:00+00:00")
    _version(registry, ".c.partial")
    (_version(registry, "broken") / MANIFEST).write_text("{", encoding="utf-8")
    (registry / "not-a-model").mkdir()
    promote(registry, "a", reason="")
    found = versions(registry)
    assert [(v.name, v.promoted) for v in found] == [("b", False), ("a", True)]
    assert found[1].folder == registry / "a" and found[1].manifest.version == "a"


def test_promotions_and_roll_backs_are_audit_records(registry: Path, tmp_path: Path) -> None:
    for name in ("v1", "v2"):
        _version(registry, name)
    trail = AuditTrail(tmp_path / "audit", source_id="BONECT@host/trainer")
    promote(registry, "v1", reason="first", now=T0, audit=trail)
    promote(registry, "v2", reason="better on local data", now=T0, audit=trail)
    assert rollback(registry, now=T0, audit=trail) == "v1"
    lines = [json.loads(line) for line in trail.path.read_text().splitlines()]
    assert [r["Event"] for r in lines] == ["model_promoted", "model_promoted", "model_rolled_back"]
    assert lines[1]["EventOutcomeDescription"] == "better on local data"
    assert lines[2]["bonect"] == {"promoted": "v1", "previous": "v2", "at": T0.isoformat()}
