"""The CT numbers every part agrees on: the HU range stored and predicted, air, the bone window.

One place for them, so that the sCT writer, the converter's clipping, a model's manifest
defaults, the trainer's target scaling and the phantom cannot drift apart.

* :data:`HU_MIN`, :data:`HU_MAX`: the range of a 12-bit CT with RescaleIntercept -1024
  (stored 0..4095), the range most scanners reconstruct and PACS expect. Every synthetic CT is
  clipped to it, a model's output [0, 1] maps onto it, and the phantom's CT is clipped to it.
  (SynthRAD's metric range, [-1024, 3000], is a different thing: see
  :data:`bonect.image_metrics.SYNTHRAD_RANGE`.)
* :data:`AIR_HU`: air, the value outside the head and the fill of resampling.
* :data:`BONE_WINDOW`: centre and width of the window the paper shows its images in, also the
  first preset of every sCT series.
"""

from __future__ import annotations

from typing import Final

HU_MIN: Final = -1024
"""The lowest CT number stored or predicted (HU)."""

HU_MAX: Final = 3071
"""The highest CT number stored or predicted (HU): 4095 above :data:`HU_MIN`, 12 bits."""

HU_RANGE: Final[tuple[float, float]] = (float(HU_MIN), float(HU_MAX))
"""``(HU_MIN, HU_MAX)`` as floats, for clipping float arrays."""

AIR_HU: Final = -1000.0
"""Air (HU): outside the head, and the fill value when a CT is resampled."""

BONE_WINDOW: Final[tuple[int, int]] = (500, 2000)
"""The bone window as ``(centre, width)`` in HU (W 2000 / L 500)."""


def window_bounds(window: tuple[float, float]) -> tuple[float, float]:
    """The ``(low, high)`` HU shown by a ``(centre, width)`` window, e.g. (-500, 1500)."""
    centre, width = window
    return centre - width / 2, centre + width / 2
