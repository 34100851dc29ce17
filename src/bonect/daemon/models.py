"""The model in use: one warm conversion method, swapped between jobs when a new one is promoted.

The registry folder is watched (watchdog) for a change of its ``promoted`` pointer; the worker
calls :meth:`ModelHolder.refresh` between jobs, so a swap never happens mid-conversion. A newly
promoted model is loaded and checked on a small phantom slab first; a model that fails to load
or gives nonsense is refused with a log line and the current one stays.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bonect.converter.model_folder import PROMOTED, load_model, promoted_model
from bonect.converter.pipeline import Classical, Method, convert, resolve_method
from bonect.errors import BonectError
from bonect.phantom.generate import Acquisition, generate_case

logger = logging.getLogger(__name__)


def smoke_test(method: Method) -> None:
    """Convert a coarse phantom with `method` (one plane); raise if the result is not sane."""
    case = generate_case(
        0, 0, acquisition=Acquisition("axial", (8.0, 6.0, 6.0)), ct_acquisition=None
    )
    sct = convert(case.mr, method, planes=("axial",)).sct.array
    if not np.isfinite(sct).all():
        raise BonectError("smoke test: the model produced non-finite values")
    body = case.labels.array > 0
    inside = float(np.median(sct[body]))
    if not -300.0 < inside < 600.0:
        raise BonectError(f"smoke test: median inside the head is {inside:.0f} HU, not tissue")


class ModelHolder:
    """Holds the conversion method; ``auto`` follows the registry's promoted model."""

    def __init__(self, spec: str, registry: Path, device: torch.device, method: Method) -> None:
        self._spec = spec
        self._registry = registry
        self._device = device
        self._method = method
        self._pointer = self._read_pointer()
        self._changed = threading.Event()
        self._observer: Any = None

    @classmethod
    def open(cls, spec: str, registry: Path, device: torch.device) -> ModelHolder:
        """Load the configured method (a broken promoted model falls back to classical)."""
        registry.mkdir(parents=True, exist_ok=True)
        try:
            method = resolve_method(spec, registry=registry, device=device)
        except BonectError as exc:
            if spec != "auto":
                raise
            logger.error("promoted model refused, using the classical map: %s", exc)
            method = Classical()
        logger.info("model in use: %s", _label(method))
        return cls(spec, registry, device, method)

    @property
    def current(self) -> Method:
        return self._method

    @property
    def label(self) -> str:
        return _label(self._method)

    def _read_pointer(self) -> str:
        try:
            return (self._registry / PROMOTED).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""

    def refresh(self) -> bool:
        """Swap in a newly promoted model if there is one; True when the model changed."""
        self._changed.clear()
        if self._spec != "auto":
            return False
        pointer = self._read_pointer()
        if pointer == self._pointer:
            return False
        self._pointer = pointer
        try:
            folder = promoted_model(self._registry)
            candidate: Method = (
                Classical() if folder is None else load_model(folder, device=self._device)
            )
            smoke_test(candidate)
        except (BonectError, OSError, RuntimeError, ValueError) as exc:
            logger.error("promoted model %r refused, keeping %s: %s", pointer, self.label, exc)
            return False
        self._method = candidate
        logger.info("model swapped in: %s", self.label)
        return True

    def watch(self) -> None:
        """Start a watchdog observer on the registry that flags changes of the pointer."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        changed = self._changed

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if Path(str(event.src_path)).name == PROMOTED or str(
                    getattr(event, "dest_path", "")
                ).endswith(PROMOTED):
                    changed.set()

        observer = Observer()
        observer.schedule(_Handler(), str(self._registry), recursive=False)
        observer.daemon = True
        observer.start()
        self._observer = observer

    @property
    def change_seen(self) -> bool:
        return self._changed.is_set()

    def stop(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)


def _label(method: Method) -> str:
    return method.label
