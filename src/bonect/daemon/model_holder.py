"""The model in use: one warm conversion method, swapped between jobs when a new one is promoted.

With ``[converter] model = "auto"`` the holder follows the registry's ``promoted`` pointer
(:mod:`bonect.registry`; no pointer: the classical map). A watchdog observer on the registry
flags a change of the pointer; the worker calls :meth:`ModelHolder.refresh` between jobs, so a
swap never happens mid-conversion. A newly promoted model is loaded and checked on a few slices
of a small synthetic head first (:func:`smoke_test`); a model that fails to load or gives
nonsense is refused with a log line and the current one stays. Rewriting the pointer, even with
the same name, asks for a new check: that is how an operator retries a refused model or rolls
back to an earlier one.

A model named explicitly in the config (a folder, or ``classical``) is never swapped.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from watchdog.events import (
    FileClosedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from bonect.config import Precision
from bonect.converter.inference import F32, predict_plane
from bonect.converter.model_folder import LoadedModel, load_model
from bonect.converter.pipeline import Classical, Method, convert, resolve_method
from bonect.converter.preprocess import Mask, prepare
from bonect.converter.volume import Volume
from bonect.errors import BonectError, ModelError
from bonect.hounsfield import HU_RANGE
from bonect.registry import PROMOTED, Pointer, promoted_model

logger = logging.getLogger(__name__)

SMOKE_SPACING_MM = 6.0
"""The smoke test's head is drawn on a coarse isotropic grid (about 30 k voxels)."""

SMOKE_SHAPE = (30, 36, 30)
"""Axial slices (inferior to superior), rows (anterior to posterior), columns (right to left)."""

SMOKE_SLICES = (0.3, 0.4, 0.5, 0.6, 0.7)
"""Where the smoke test's axial slices lie in the model cube (fractions of its height).

Five slices, not the whole cube: a full Light_U-Net predicts 224 slices of 224² in a minute or
more on a CPU, five in a few seconds; a swap waits for the check between two jobs.
"""

SMOKE_TISSUE_HU = (-300.0, 600.0)
"""Where the median of the sCT inside the head must lie: soft tissue, not air and not bone."""


def smoke_volume() -> tuple[Volume, Mask]:
    """A small synthetic bone-MR head (ZTE-like signal, soft tissue = 1) and its head mask.

    Three nested ellipsoids drawn with NumPy: scalp and soft tissue (1.0), a skull shell about
    10 mm thick (0.35, bone is dark in bone MR) and the brain (0.93), air outside (0). Enough
    to tell a model that predicts tissue inside a head from one that does not; no anatomy.
    """
    n = np.array(SMOKE_SHAPE, dtype=np.float64)
    grids = np.ogrid[tuple(slice(0, int(k)) for k in n)]
    mm = [(g - (k - 1) / 2) * SMOKE_SPACING_MM for g, k in zip(grids, n, strict=True)]

    def radius(axes: tuple[float, float, float]) -> npt.NDArray[np.float64]:
        r2 = sum((x / a) ** 2 for x, a in zip(mm, axes, strict=True))
        return np.sqrt(np.asarray(r2, dtype=np.float64))

    head = radius((80.0, 100.0, 78.0)) <= 1.0
    skull = radius((72.0, 92.0, 70.0))
    mr = np.zeros(SMOKE_SHAPE, dtype=np.float32)
    mr[head] = 1.0
    mr[skull <= 1.0] = 0.35
    mr[skull <= 0.86] = 0.93
    affine = np.eye(4)
    affine[:3, :3] = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T
    affine[:3, :3] *= SMOKE_SPACING_MM  # slices along +z (superior), rows +y, columns +x (LPS)
    return Volume(mr, affine), np.asarray(head, dtype=bool)


def smoke_slices(mr: Volume, size: int) -> tuple[F32, Mask]:
    """The model input and the head mask on the :data:`SMOKE_SLICES` axial slices of the cube.

    The converter's own preprocessing (:func:`bonect.converter.preprocess.prepare`), of which
    only a few slices are kept: shape ``(len(SMOKE_SLICES), size, size)``.
    """
    prepared = prepare(mr, size)
    rows = [round(fraction * (size - 1)) for fraction in SMOKE_SLICES]
    return prepared.image[rows], prepared.cube_mask[rows]


def smoke_test(method: Method, *, device: torch.device | None = None) -> None:
    """Convert part of a small synthetic head with ``method``; raise if the result is not sane.

    A model predicts the :data:`SMOKE_SLICES` of its cube (the classical map converts the whole
    volume: it is cheap). Sane means: every value is finite and within the method's HU range,
    and the median inside the head is soft tissue (:data:`SMOKE_TISSUE_HU`). Random weights, a
    model trained with another HU mapping, or weights that do not belong to their manifest,
    fail the last check.

    Raises
    ------
    ModelError
        The method's output is not sane; the message says how.
    """
    mr, head = smoke_volume()
    if isinstance(method, LoadedModel):
        image, head = smoke_slices(mr, method.manifest.input_size)
        sct = predict_plane(method, image, "axial", batch_size=len(SMOKE_SLICES), device=device)
        low, high = method.manifest.hu_min, method.manifest.hu_max
    else:
        sct = convert(mr, method, planes=("axial",), device=device).sct.array
        low, high = HU_RANGE
    if not np.isfinite(sct).all():
        raise ModelError("smoke test: the model produced non-finite values")
    if float(sct.min()) < low - 1.0 or float(sct.max()) > high + 1.0:
        raise ModelError(f"smoke test: values outside the model's {low:.0f}..{high:.0f} HU")
    if not head.any():
        raise ModelError("smoke test: no head found in the smoke slices")
    inside = float(np.median(sct[head]))
    if not SMOKE_TISSUE_HU[0] < inside < SMOKE_TISSUE_HU[1]:
        raise ModelError(f"smoke test: median inside the head is {inside:.0f} HU, not tissue")


def load_promoted(registry: Path, device: torch.device, precision: Precision = "auto") -> Method:
    """The promoted model of ``registry``, smoke-tested; the classical map when none is promoted.

    Raises
    ------
    ModelError
        The pointer names no model folder, the folder does not load, or the smoke test fails.
    """
    folder = promoted_model(registry)
    method: Method = (
        Classical() if folder is None else load_model(folder, device=device, precision=precision)
    )
    if isinstance(method, LoadedModel):
        smoke_test(method, device=device)
    return method


def _folder_name(method: Method) -> str:
    return method.folder.name if isinstance(method, LoadedModel) else ""


class ModelHolder:
    """Holds the conversion method; ``auto`` follows the registry's promoted model.

    Build it with :meth:`open`; the constructor does no I/O.
    """

    def __init__(
        self,
        *,
        spec: str,
        registry: Path,
        device: torch.device,
        method: Method,
        pointer: Pointer | None,
        precision: Precision = "auto",
    ) -> None:
        self._spec = spec
        self._registry = registry
        self._device = device
        self._precision = precision
        self._method = method
        self._pointer = pointer
        self._changed = threading.Event()
        self._observer: BaseObserver | None = None

    @classmethod
    def open(
        cls, spec: str, registry: Path, device: torch.device, precision: Precision = "auto"
    ) -> ModelHolder:
        """Load the configured method, to run at ``precision``.

        With ``auto`` a promoted model that does not load or fails the smoke test is refused
        (logged) and the classical map is used until a good one is promoted. A model named
        explicitly must load.

        Raises
        ------
        ModelError
            ``spec`` names a folder that is not a usable model.
        """
        registry.mkdir(parents=True, exist_ok=True)
        pointer = Pointer.read(registry) if spec == "auto" else None
        method: Method
        if spec == "auto":
            try:
                method = load_promoted(registry, device, precision)
            except (BonectError, OSError, RuntimeError, ValueError) as exc:
                logger.error("promoted model refused, using the classical map: %s", exc)
                method = Classical()
        else:
            method = resolve_method(spec, registry=registry, device=device, precision=precision)
        logger.info("model in use: %s", method.label)
        return cls(
            spec=spec,
            registry=registry,
            device=device,
            method=method,
            pointer=pointer,
            precision=precision,
        )

    @property
    def current(self) -> Method:
        """The method to convert with now."""
        return self._method

    @property
    def label(self) -> str:
        """Name and version of the method in use, e.g. ``classical 1`` or ``head-zte 2026.11``."""
        return self._method.label

    def refresh(self) -> bool:
        """Swap in a newly promoted model if there is one; True when the model changed.

        Call it between jobs only. The pointer file is read each time (a few bytes), so a
        change is seen even when the watcher is not running or missed an event.
        """
        self._changed.clear()
        if self._spec != "auto":
            return False
        pointer = Pointer.read(self._registry)
        if pointer == self._pointer:
            return False
        self._pointer = pointer
        name = "" if pointer is None else pointer.name
        if name == _folder_name(self._method):
            return False  # rewritten with the name in use: nothing to swap
        try:
            candidate = load_promoted(self._registry, self._device, self._precision)
        except (BonectError, OSError, RuntimeError, ValueError) as exc:
            logger.error("promoted model %r refused, keeping %s: %s", name, self.label, exc)
            return False
        previous = self.label
        self._method = candidate
        logger.info("model swapped in: %s (was %s)", self.label, previous)
        return True

    def watch(self) -> None:
        """Start a watchdog observer that flags changes of the registry's pointer."""
        if self._observer is not None:
            return
        observer = Observer()
        observer.schedule(
            _PointerHandler(self._changed),
            str(self._registry),
            recursive=False,
            # one event per change, when it is complete: a write raises "created" and "modified"
            # before its "closed" (close after writing), and a flag set by those early events
            # would be set again after refresh() by the late one
            event_filter=[FileClosedEvent, FileMovedEvent, FileDeletedEvent],
        )
        observer.daemon = True
        observer.start()
        self._observer = observer

    @property
    def change_seen(self) -> bool:
        """Whether the watcher saw the pointer change since the last :meth:`refresh`."""
        return self._changed.is_set()

    def wait_for_change(self, timeout: float) -> bool:
        """Block until the watcher sees the pointer change, at most ``timeout`` seconds."""
        return self._changed.wait(timeout)

    def stop(self) -> None:
        """Stop the watcher, if it runs."""
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None


class _PointerHandler(FileSystemEventHandler):
    """Sets the flag when ``promoted`` is written, replaced (renamed onto) or removed."""

    def __init__(self, changed: threading.Event) -> None:
        self._changed = changed

    def on_any_event(self, event: FileSystemEvent) -> None:
        paths = [event.src_path, getattr(event, "dest_path", "")]
        if any(Path(os.fsdecode(p)).name == PROMOTED for p in paths if p):
            self._changed.set()
