"""The configuration file: frozen pydantic models, one per [section], loaded once in main.

The annotated default is ``config.toml`` at the repository root. Relative paths in a file are
relative to that file. :func:`load_config` reports every problem as ``section.key: message``.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError

from bonect.errors import ConfigError

Plane = Literal["axial", "coronal", "sagittal"]
DEFAULT_LOCATIONS = (Path("config.toml"), Path("/etc/bonect/config.toml"))


class NodeConfig(BaseModel, frozen=True, extra="forbid"):
    ae_title: str = Field(default="BONECT", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)


class StorageConfig(BaseModel, frozen=True, extra="forbid"):
    dir: Path = Path("var")


class CatalogConfig(BaseModel, frozen=True, extra="forbid"):
    url: str = ""


class SettleConfig(BaseModel, frozen=True, extra="forbid"):
    quiet_seconds: float = Field(default=60.0, gt=0)


class ConverterConfig(BaseModel, frozen=True, extra="forbid"):
    model: str = "auto"
    planes: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=16, ge=1)


class Destination(BaseModel, frozen=True, extra="forbid"):
    name: str = Field(min_length=1)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)


class Config(BaseModel, frozen=True, extra="forbid"):
    node: NodeConfig = NodeConfig()
    storage: StorageConfig = StorageConfig()
    catalog: CatalogConfig = CatalogConfig()
    settle: SettleConfig = SettleConfig()
    converter: ConverterConfig = ConverterConfig()
    destinations: tuple[Destination, ...] = ()

    @property
    def model_registry(self) -> Path:
        """The folder of model versions and the pointer to the promoted one."""
        return self.storage.dir / "models"


def _resolve_paths(config: Config, base: Path) -> Config:
    storage_dir = config.storage.dir
    if not storage_dir.is_absolute():
        storage_dir = (base / storage_dir).resolve()
    return config.model_copy(update={"storage": StorageConfig(dir=storage_dir)})


def load_config(path: Path) -> Config:
    """Read and validate a config file; every problem is reported, none repaired."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = (f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}:\n  " + "\n  ".join(lines)) from exc
    return _resolve_paths(config, path.resolve().parent)


def find_config(explicit: Path | None = None) -> Path | None:
    """``--config``, then ``$BONECT_CONFIG``, then ``./config.toml``, then ``/etc/bonect``."""
    if explicit is not None:
        return explicit
    env = os.environ.get("BONECT_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_LOCATIONS:
        if candidate.is_file():
            return candidate
    return None
