"""Publishing trained models into the registry, then promoting and rolling them back."""

from __future__ import annotations

from pathlib import Path

import pytest

from bonect.converter.model_folder import WEIGHTS, load_model
from bonect.converter.networks import LightUNet
from bonect.registry import (
    Manifest,
    RegistryError,
    promote,
    promoted_model,
    promotion_history,
    rollback,
    versions,
)
from bonect.trainer.registry import publish


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
    assert [e.promoted for e in promotion_history(registry)] == ["m1", "m2"]

    assert rollback(registry) == "m1"
    assert promoted_model(registry) == registry / "m1"
    assert promotion_history(registry)[-1].reason == "roll back from m2"


def test_publishing_never_overwrites_nor_promotes(tmp_path: Path) -> None:
    registry = tmp_path / "models"
    registry.mkdir()
    publish(registry, "m1", _manifest("m1", ""), LightUNet(base_filters=4, levels=3))
    with pytest.raises(RegistryError, match="exists already"):
        publish(registry, "m1", _manifest("m1", ""), LightUNet(base_filters=4, levels=3))
    assert (registry / "m1" / WEIGHTS).is_file()
    assert not any(p.name.startswith(".") for p in registry.iterdir())  # no partial left
    assert not (registry / "promoted").exists()
