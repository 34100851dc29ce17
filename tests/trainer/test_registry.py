"""The registry as the trainer sees it: publish, promote, roll back; the pointer follows."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonect.converter.model_folder import Manifest, load_model, promoted_model
from bonect.converter.models import LightUNet
from bonect.trainer.registry import (
    RegistryError,
    promote,
    promotion_history,
    publish,
    rollback,
    versions,
)


def _manifest(name: str, created: str) -> Manifest:
    return Manifest(
        name=name,
        version="1",
        architecture="light_unet",
        arguments={"base_filters": 4, "levels": 3},
        input_size=32,
        created=created,
    )


def test_publish_promote_and_roll_back(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    net = LightUNet(base_filters=4, levels=3)
    first = publish(registry, "m1", _manifest("m1", "2026-01-01T00:00:00+00:00"), net)
    publish(registry, "m2", _manifest("m2", "2026-02-01T00:00:00+00:00"), net)
    assert load_model(first).manifest.name == "m1"  # a published version loads as it is
    assert promoted_model(registry) is None
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback(registry)

    promote(registry, "m1", reason="first")
    promote(registry, "m2", reason="better on local patients")
    assert promoted_model(registry) == registry / "m2"
    assert [v.name for v in versions(registry) if v.promoted] == ["m2"]
    assert [e["promoted"] for e in promotion_history(registry)] == ["m1", "m2"]

    assert rollback(registry) == "m1"
    assert promoted_model(registry) == registry / "m1"
    assert promotion_history(registry)[-1]["reason"] == "roll back from m2"


def test_promoting_an_unknown_version_names_the_known_ones(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    publish(registry, "m1", _manifest("m1", ""), LightUNet(base_filters=4, levels=3))
    with pytest.raises(RegistryError, match=r"no model version 'm9' .*\(versions: m1\)"):
        promote(registry, "m9", reason="")
    with pytest.raises(RegistryError, match="exists already"):
        publish(registry, "m1", _manifest("m1", ""), LightUNet(base_filters=4, levels=3))
    assert not (registry / "promoted").exists()
