"""Publishing a trained model into the registry: a new version folder, weights and manifest.

Everything else about the registry (the ``promoted`` pointer, promotion, roll back, the list of
versions) is in :mod:`bonect.registry`, which the daemon shares; publishing is here because it
writes weights, which needs PyTorch.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from bonect.converter.model_folder import save_model
from bonect.registry import Manifest, RegistryError

logger = logging.getLogger(__name__)


def publish(registry: Path, name: str, manifest: Manifest, network: nn.Module) -> Path:
    """Write a new version folder ``registry/name``; never overwrites one.

    The folder is written under a hidden temporary name (weights first, manifest last) and
    renamed into place, so a version folder is either whole or absent. Publishing does not
    promote: see :func:`bonect.registry.promote`.

    Raises
    ------
    RegistryError
        A version of that name exists already.
    """
    folder = registry / name
    if folder.exists():
        raise RegistryError(f"{folder}: a version of that name exists already")
    partial = registry / f".{name}.partial"
    save_model(partial, manifest, network)
    partial.rename(folder)
    logger.info("published model version %s", name)
    return folder
