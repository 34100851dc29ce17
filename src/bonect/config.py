"""The configuration file: frozen pydantic models, one per [section], loaded once in main.

The annotated default is ``config.toml`` at the repository root. Relative paths in a file are
relative to that file. :func:`load_config` reports every problem as ``section.key: message``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bonect.config_rules import RulesConfig
from bonect.errors import ConfigError

Plane = Literal["axial", "coronal", "sagittal"]
Precision = Literal["auto", "float32", "bfloat16"]
"""How the U-Net's forward computes (``[converter] precision``): ``auto`` is float16 autocast on
CUDA, bfloat16 autocast on a CPU that computes bfloat16 natively (AVX512-BF16 or AMX), else
float32 (see :func:`bonect.converter.inference.forward_dtype`)."""
DEFAULT_LOCATIONS = (Path("config.toml"), Path("/etc/bonect/config.toml"))
MODEL_KEYWORDS = ("auto", "classical")  # [converter] model: these, or a model folder


def _networks(value: tuple[str, ...]) -> tuple[str, ...]:
    """Validator: every item an address or a CIDR network."""
    for text in value:
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
    return value


def _tls_pair(value: Path | None, info: ValidationInfo) -> Path | None:
    """Validator of ``tls_key``: set together with ``tls_certificate``, or neither."""
    if (info.data.get("tls_certificate") is None) != (value is None):
        raise ValueError("tls_certificate and tls_key go together")
    return value


class NodeConfig(BaseModel, frozen=True, extra="forbid"):
    ae_title: str = Field(default="BONECT", min_length=1, max_length=16)
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    max_associations: int = Field(default=10, ge=1, le=1000)  # associations at once
    max_pending_connections: int = Field(default=64, ge=1, le=10000)  # not yet associated
    request_timeout_seconds: float = Field(default=10.0, gt=0, le=300)  # TLS + A-ASSOCIATE-RQ
    idle_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)  # silent association


class StorageConfig(BaseModel, frozen=True, extra="forbid"):
    dir: Path = Path("var")
    reserve_mb: int = Field(default=1024, ge=0)  # refuse new data below this much free disk
    retention_days: float = Field(default=30.0, ge=0)  # 0 keeps processed data forever
    fsync: bool = True  # a received instance is on disk before success is answered
    max_dataset_mb: int = Field(default=2048, ge=1)  # a larger instance is refused (0xA700)


class SecurityConfig(BaseModel, frozen=True, extra="forbid"):
    allowed_ae_titles: tuple[str, ...] = ()  # empty: any calling AE title
    allowed_networks: tuple[str, ...] = ()  # CIDR or addresses; empty: loopback only
    allow_any_peer: bool = False  # needed to listen beyond loopback without an allow-list
    tls_certificate: Path | None = None
    tls_key: Path | None = Field(default=None, validate_default=True)
    tls_ca: Path | None = None  # when set, peers must present a certificate it signed

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _networks(value)

    @field_validator("tls_key")
    @classmethod
    def _check_tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _tls_pair(value, info)


# what carries the C-STOREs to the destinations: pynetdicom in the worker's process, or DCMTK
# dcmsend (one process per batch, each instance's status read off its report). Destinations
# have no TLS settings (sending is plain DICOM), so no destination can ask dcmsend for TLS,
# which DCMTK 3.6.7's dcmsend lacks.
SendTransport = Literal["pynetdicom", "dcmsend"]


class SenderConfig(BaseModel, frozen=True, extra="forbid"):
    # also send the sCT to the destination whose ae_title is the MR sender's calling AE title
    return_to_sender: bool = False
    retry_initial_seconds: float = Field(default=10.0, gt=0)
    retry_max_seconds: float = Field(default=1800.0, gt=0)
    max_attempts: int = Field(default=50, ge=1)  # then the job fails and waits for an operator
    dimse_timeout_seconds: float = Field(default=30.0, gt=0)
    echo_interval_seconds: float = Field(default=300.0, ge=0)  # C-ECHO every peer; 0: never
    transport: SendTransport = "pynetdicom"


class MetricsConfig(BaseModel, frozen=True, extra="forbid"):
    host: str = "127.0.0.1"
    port: int = Field(default=9464, ge=0, le=65535)  # Prometheus /metrics; 0 picks a free port
    enabled: bool = True


class AuditConfig(BaseModel, frozen=True, extra="forbid"):
    enabled: bool = True  # <storage dir>/audit/audit.jsonl
    syslog: str = ""  # "udp://host[:port]": each record also as an RFC 5424 message

    @field_validator("syslog")
    @classmethod
    def _udp(cls, value: str) -> str:
        if value and not re.fullmatch(r"udp://[^/:\s]+(:\d{1,5})?", value):
            raise ValueError("must be udp://host[:port]")
        return value


class CatalogConfig(BaseModel, frozen=True, extra="forbid"):
    url: str = ""
    # a worker renews its claim on a job every third of this; a dead one's job is taken over
    # by another worker once it ends
    lease_seconds: float = Field(default=120.0, ge=1)


class SettleConfig(BaseModel, frozen=True, extra="forbid"):
    quiet_seconds: float = Field(default=60.0, gt=0)
    aborted_quiet_seconds: float = Field(default=3600.0, gt=0)  # after an aborted association


class ConverterConfig(BaseModel, frozen=True, extra="forbid"):
    model: str = "auto"
    planes: tuple[Plane, ...] = ("axial", "coronal", "sagittal")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=16, ge=1)
    threads: int = Field(default=0, ge=0)  # PyTorch CPU threads; 0: PyTorch's default
    precision: Precision = "auto"


class TrainerConfig(BaseModel, frozen=True, extra="forbid"):
    """``bonect-trainer``: pairing, registration, training and evaluation."""

    pair_window_days: float = Field(default=183.0, gt=0)  # MR and CT at most this far apart
    registration_threshold: float = Field(default=0.7, ge=0, le=1)  # lower scores: set aside
    image_size: int = Field(default=128, ge=16)  # model input (the paper: 224)
    crop_size: int = Field(default=0, ge=0)  # train on windows of this side; 0: whole slices
    architecture: Literal["light_unet", "vgg16_unet"] = "light_unet"
    loss: Literal["mae", "mse", "mix", "mae_bone"] = "mae"  # mae_bone: L1, bone counts twice
    batch_size: int = Field(default=128, ge=1)
    max_epochs: int = Field(default=100, ge=1)
    patience: int = Field(default=5, ge=1)  # early stop after this many epochs without gain
    steps_per_epoch: int = Field(default=0, ge=0)  # 0: every slice once per epoch
    folds: int = Field(default=4, ge=2)  # patient-level cross-validation
    repeats: int = Field(default=1, ge=1)  # the paper repeated its 4-fold CV 10 times
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(default=0, ge=0)  # PyTorch CPU threads; 0: PyTorch's default
    external_sites: tuple[str, ...] = ()  # default --external sites of `augment`
    balance_sites: bool = True  # epochs draw local and external slices in equal share
    contrast_remap: float = Field(default=0.0, ge=0, le=1)  # share of slices randomly remapped
    context_slices: int = Field(default=0, ge=0, le=3)  # neighbours as input channels; 0: 2D

    @field_validator("image_size", "crop_size")
    @classmethod
    def _multiple_of_16(cls, value: int) -> int:
        if value % 16:
            raise ValueError("must be a multiple of 16 (the U-Net halves it four times)")
        return value

    @model_validator(mode="after")
    def _channels(self) -> TrainerConfig:
        if self.architecture == "vgg16_unet" and self.context_slices > 1:
            raise ValueError(
                f"context_slices {self.context_slices}: vgg16_unet takes at most 1 "
                "(3 input channels)"
            )
        return self


class Destination(BaseModel, frozen=True, extra="forbid"):
    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    # "all": every sCT; "returns": only the sCT of series it sent ([sender] return_to_sender)
    receives: Literal["all", "returns"] = "all"
    # withdraw a replaced sCT series here with an IHE IOCM rejection note (a KOS)
    rejection_notes: bool = True
    # beside each sCT series (U-Net only): "segmentation", a DICOM SEG of the voxels whose
    # planes disagree by more than the model's threshold; "parametric_map", the spread in HU
    uncertainty: Literal["none", "segmentation", "parametric_map"] = "none"


_HOURS = re.compile(r"^\s*(\d{1,2})(?::(\d{2}))?\s*-\s*(\d{1,2})(?::(\d{2}))?\s*$")


def parse_hours(text: str) -> tuple[int, int] | None:
    """``"20-06"`` or ``"19:30-06:00"`` as (start, end) minutes of the day; "" / "any": None.

    The window may wrap past midnight; start == end is refused (say "any" for all day).
    """
    if text.strip().lower() in ("", "any"):
        return None
    match = _HOURS.match(text)
    if match is None:
        raise ValueError(f'{text!r}: expected HH-HH or HH:MM-HH:MM (e.g. "20-06"), or "any"')
    h1, m1, h2, m2 = (int(g) if g else 0 for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        raise ValueError(f"{text!r}: not a time of day")
    start, end = (h1 * 60 + m1) % 1440, (h2 * 60 + m2) % 1440
    if start == end:
        raise ValueError(f'{text!r}: an empty window (use "any" for all day)')
    return start, end


class SourceConfig(BaseModel, frozen=True, extra="forbid"):
    """``[[sources]]``: a PACS queried for a bone-MR patient's CT (C-FIND, C-MOVE / C-GET)."""

    name: str = Field(min_length=1, max_length=64)
    ae_title: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(ge=1, le=65535)
    retrieve: Literal["move", "get"] = "move"
    move_destination_ae: str | None = Field(default=None, min_length=1, max_length=16)
    allowed_hours: str = "any"  # "20-06": only from 20:00 to 06:00 local time
    max_associations: int = Field(default=2, ge=1)  # retrieval's own budget, apart from receive
    max_instances_per_second: float = Field(default=0.0, ge=0)  # 0: unlimited

    @field_validator("allowed_hours")
    @classmethod
    def _hours(cls, value: str) -> str:
        parse_hours(value)
        return value

    @property
    def hours(self) -> tuple[int, int] | None:
        """The allowed window as (start, end) minutes of the day; None: any time."""
        return parse_hours(self.allowed_hours)


class WebConfig(BaseModel, frozen=True, extra="forbid"):
    """``[web]``: the status page served by the daemon (read-only unless ``actions``)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)  # 0 picks a free port
    allowed_hosts: tuple[str, ...] = ()  # client CIDRs or addresses besides loopback
    password_file: Path | None = None  # "user:hash" lines (bcrypt or pbkdf2_sha256)
    tls_certificate: Path | None = None  # HTTPS when set (with tls_key)
    tls_key: Path | None = Field(default=None, validate_default=True)
    actions: bool = False  # promote / roll back models from the page (needs password_file)
    show_phi: bool = False  # patient IDs and names on the pages; else hashed keys and UIDs
    refresh_seconds: int = Field(default=10, ge=0)  # queue page reload; 0: never
    jobs_shown: int = Field(default=50, ge=1, le=1000)

    @field_validator("allowed_hosts")
    @classmethod
    def _check_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return _networks(value)

    @field_validator("tls_key")
    @classmethod
    def _check_tls_pair(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _tls_pair(value, info)

    @model_validator(mode="after")
    def _web_exposure(self) -> WebConfig:
        if self.host not in ("127.0.0.1", "::1", "localhost") and (
            not self.allowed_hosts or self.password_file is None
        ):
            raise ValueError(
                f"host {self.host!r} listens beyond this machine: set allowed_hosts and "
                "password_file"
            )
        if self.actions and self.password_file is None:
            raise ValueError("actions = true needs password_file (actions need a login)")
        return self


class Config(BaseModel, frozen=True, extra="forbid"):
    node: NodeConfig = NodeConfig()
    security: SecurityConfig = SecurityConfig()
    storage: StorageConfig = StorageConfig()
    catalog: CatalogConfig = CatalogConfig()
    settle: SettleConfig = SettleConfig()
    converter: ConverterConfig = ConverterConfig()
    rules: RulesConfig = RulesConfig()
    sender: SenderConfig = SenderConfig()
    metrics: MetricsConfig = MetricsConfig()
    audit: AuditConfig = AuditConfig()
    web: WebConfig = WebConfig()
    trainer: TrainerConfig = TrainerConfig()
    destinations: tuple[Destination, ...] = ()
    sources: tuple[SourceConfig, ...] = ()

    @model_validator(mode="after")
    def _exposure(self) -> Config:
        exposed = self.node.host not in ("127.0.0.1", "::1", "localhost")
        if exposed and not self.security.allowed_networks and not self.security.allow_any_peer:
            raise ValueError(
                f"node.host {self.node.host!r} listens beyond this machine: set "
                "security.allowed_networks, or security.allow_any_peer = true"
            )
        names = [d.name for d in self.destinations]
        if len(set(names)) != len(names):
            raise ValueError("destinations: names must be unique")
        if len({s.name for s in self.sources}) != len(self.sources):
            raise ValueError("sources: names must be unique")
        return self

    @property
    def model_registry(self) -> Path:
        """The folder of model versions and the pointer to the promoted one."""
        return self.storage.dir / "models"

    @property
    def audit_dir(self) -> Path:
        """The audit trail's folder (``audit.jsonl``)."""
        return self.storage.dir / "audit"

    @property
    def trainer_dir(self) -> Path:
        """The trainer's sites, registrations, slice cache and runs."""
        return self.storage.dir / "trainer"


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None or path.is_absolute():
        return path
    return (base / path).resolve()


def _resolve_paths(config: Config, base: Path) -> Config:
    storage = config.storage.model_copy(update={"dir": _resolve(config.storage.dir, base)})
    security = config.security.model_copy(
        update={
            "tls_certificate": _resolve(config.security.tls_certificate, base),
            "tls_key": _resolve(config.security.tls_key, base),
            "tls_ca": _resolve(config.security.tls_ca, base),
        }
    )
    converter = config.converter
    if converter.model not in MODEL_KEYWORDS:  # a model folder
        model = str(_resolve(Path(converter.model), base))
        converter = converter.model_copy(update={"model": model})
    web = config.web.model_copy(
        update={
            key: _resolve(getattr(config.web, key), base)
            for key in ("password_file", "tls_certificate", "tls_key")
        }
    )
    return config.model_copy(
        update={"storage": storage, "security": security, "converter": converter, "web": web}
    )


def _error_line(loc: tuple[int | str, ...], message: str) -> str:
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(map(str, loc))}: {message}" if loc else message


def load_config(path: Path) -> Config:
    """Read and validate a config file; every problem is reported, none repaired."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        lines = (_error_line(e["loc"], e["msg"]) for e in exc.errors())
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
