"""A training run's folder: ``checkpoint.pt``, ``history.csv`` / ``.json`` and ``loss_curve.png``.

The checkpoint holds what resuming needs (weights, optimiser, best weights and score, patience
counter, history, RNG state) and the identity of the run (the options that shape training and
the cached data), so that a run is never resumed with other options or data. Every file is
replaced atomically: an interruption leaves the previous version, whole.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bonect.errors import BonectError

logger = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1
HISTORY_CSV = "history.csv"
HISTORY_JSON = "history.json"
LOSS_CURVE = "loss_curve.png"


class TrainingError(BonectError):
    """A training run cannot start or resume (no data, a checkpoint of another run...)."""


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of training.

    Losses are in the units of the loss on [0, 1] grey levels; ``val_mae_hu`` is the mean
    absolute error in HU over every pixel of the validation slices. ``seconds`` is the whole
    epoch (training, validation, checkpoint); ``slices_per_second`` counts training slices over
    the training phase only (loading, augmentation, forward, backward, step).
    """

    epoch: int
    train_loss: float
    val_loss: float
    val_mae_hu: float
    seconds: float
    slices_per_second: float
    learning_rate: float

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpochRecord:
        return cls(
            epoch=int(data["epoch"]),
            **{f.name: float(data[f.name]) for f in fields(cls) if f.name != "epoch"},
        )


def write_history(run_dir: Path, history: Sequence[EpochRecord]) -> None:
    """Write ``history.csv`` and ``history.json`` (each replaced atomically)."""
    names = [f.name for f in fields(EpochRecord)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow(asdict(record))
    _replace(run_dir / HISTORY_CSV, text.getvalue())
    rows = [asdict(r) for r in history]
    _replace(run_dir / HISTORY_JSON, json.dumps(rows, indent=2) + "\n")


def read_history(run_dir: Path) -> list[EpochRecord]:
    """The records of ``history.json``."""
    rows = json.loads((run_dir / HISTORY_JSON).read_text(encoding="utf-8"))
    return [EpochRecord.from_dict(row) for row in rows]


def draw_loss_curve(history: Sequence[EpochRecord], best_epoch: int, path: Path) -> Path:
    """Training and validation loss per epoch, the best epoch marked; a PNG at `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state

    figure = Figure(figsize=(6.0, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    epochs = [r.epoch for r in history]
    ax.plot(epochs, [r.train_loss for r in history], "o-", label="training")
    ax.plot(epochs, [r.val_loss for r in history], "s-", label="validation")
    best = [r for r in history if r.epoch == best_epoch]
    if best:
        ax.axvline(best_epoch, color="0.6", linestyle="--", linewidth=1)
        ax.plot([best_epoch], [best[0].val_loss], "*", markersize=14, color="tab:red")
        ax.annotate(
            f"best: epoch {best_epoch}, {best[0].val_mae_hu:.1f} HU",
            (best_epoch, best[0].val_loss),
            textcoords="offset points",
            xytext=(6, 10),
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("loss per epoch")
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    os.replace(tmp, path)
    return path


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cpu_copy(network: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a network's weights on the CPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in network.state_dict().items()}


@dataclass(frozen=True)
class RunState:
    """Where a run stands after an epoch: everything resuming needs besides the optimiser."""

    best_weights: dict[str, torch.Tensor]
    epoch: int = 0
    best_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_mae_hu: float = math.inf
    bad_epochs: int = 0  # epochs since the last improvement
    history: tuple[EpochRecord, ...] = ()

    def after_epoch(self, network: nn.Module, record: EpochRecord) -> RunState:
        if record.val_loss < self.best_val_loss:  # NaN never improves
            return replace(
                self,
                best_weights=cpu_copy(network),
                epoch=record.epoch,
                best_epoch=record.epoch,
                best_val_loss=record.val_loss,
                best_val_mae_hu=record.val_mae_hu,
                bad_epochs=0,
                history=(*self.history, record),
            )
        return replace(
            self,
            epoch=record.epoch,
            bad_epochs=self.bad_epochs + 1,
            history=(*self.history, record),
        )


# options that may change between an interrupted run and its resumption
_MAY_CHANGE = ("max_epochs", "patience", "max_minutes", "device", "processes")


def identity_of(
    options: Mapping[str, Any], pairs: Sequence[tuple[str, str, str, int]]
) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the options that shape training, the data.

    `pairs` are (pair key, patient key, cache key, slices) of the cached pairs, in order.
    """
    shaping = {k: v for k, v in options.items() if k not in _MAY_CHANGE}
    data = [list(p) for p in pairs]
    identity: dict[str, Any] = json.loads(json.dumps({"options": shaping, "pairs": data}))
    return identity


def save_checkpoint(
    path: Path,
    identity: dict[str, Any],
    state: RunState,
    network: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    """Replace the checkpoint atomically (a reader sees the old one or the new one, whole)."""
    payload = {
        "format": _CHECKPOINT_FORMAT,
        "identity": json.dumps(identity, sort_keys=True),
        "state": json.dumps(
            {
                "epoch": state.epoch,
                "best_epoch": state.best_epoch,
                "best_val_loss": state.best_val_loss,
                "best_val_mae_hu": state.best_val_mae_hu,
                "bad_epochs": state.bad_epochs,
                "history": [asdict(r) for r in state.history],
            }
        ),
        "model": network.state_dict(),
        "best_weights": state.best_weights,
        "optimiser": optimiser.state_dict(),
        "scaler": scaler.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    identity: dict[str, Any],
    network: nn.Module,
    optimiser: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> RunState:
    """Restore a run from its checkpoint; TrainingError (one line) if it is of another run."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        stored = json.loads(payload["identity"])
        saved = json.loads(payload["state"])
    except Exception as exc:  # torch.load raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TrainingError(f"{path}: unreadable checkpoint ({first}); "
                            "remove it or pass resume=False") from exc  # fmt: skip
    if stored != identity:
        raise TrainingError(f"{path} is of another run ({_difference(stored, identity)}); "
                            "use another run folder or resume=False")  # fmt: skip
    network.load_state_dict(payload["model"])
    optimiser.load_state_dict(payload["optimiser"])
    if scaler.is_enabled() and payload["scaler"]:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["torch_rng"])
    return RunState(
        best_weights=payload["best_weights"],
        epoch=int(saved["epoch"]),
        best_epoch=int(saved["best_epoch"]),
        best_val_loss=float(saved["best_val_loss"]),
        best_val_mae_hu=float(saved["best_val_mae_hu"]),
        bad_epochs=int(saved["bad_epochs"]),
        history=tuple(EpochRecord.from_dict(r) for r in saved["history"]),
    )


def _difference(stored: dict[str, Any], current: dict[str, Any]) -> str:
    old, new = stored.get("options", {}), current["options"]
    changed = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    if changed:
        return "options differ: " + ", ".join(changed)
    old_pairs, new_pairs = stored.get("pairs", []), current["pairs"]
    if len(old_pairs) != len(new_pairs):
        return f"data differ: {len(old_pairs)} pairs then, {len(new_pairs)} now"
    for before, now in zip(old_pairs, new_pairs, strict=True):
        if before != now:
            return f"data differ: pair {now[0]} is not the pair it was"
    return "it differs"
