"""A stand-in for the conversion, for tests and benchmarks only: a fixed sleep, as on a GPU host.

Several worker processes on one catalog cannot show that the hand-off scales on a machine whose
cores the real conversion already fills; a worker whose conversion is a fixed wait can. Set
``BONECT_SIMULATED_FORWARD_SECONDS`` (read once, by :meth:`bonect.daemon.node.Node.open`) in the
daemon's environment and each job's conversion is that many seconds of sleep, and its "sCT" is
air everywhere, labelled model ``simulated``, not for clinical use. Everything around it (claim,
lease, reading the MR, writing and sending the DICOM series, the catalog's records) is the real
code. The daemon warns at start whenever it is set.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

import numpy as np

from bonect.converter.pipeline import Conversion
from bonect.converter.volume import Volume
from bonect.errors import ConfigError
from bonect.hounsfield import AIR_HU

ENVIRONMENT_VARIABLE = "BONECT_SIMULATED_FORWARD_SECONDS"

IDENTITY = ("simulated", "1", False)
"""(name, version, clinical use) of the simulated method, for labels, UIDs and the header."""


def simulated_forward_seconds(environ: Mapping[str, str]) -> float | None:
    """The simulated conversion's seconds from ``environ``; None when it is not set."""
    text = environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE}: not a number of seconds >= 0: {text!r}")
    return seconds


def simulate(mr: Volume, seconds: float) -> Conversion:
    """Wait ``seconds`` (the accelerator's forward pass), then return air on ``mr``'s grid."""
    time.sleep(seconds)
    return Conversion(
        sct=mr.with_array(np.full(mr.array.shape, AIR_HU, np.float32)), uncertainty=None
    )
