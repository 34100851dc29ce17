"""The phantom as training slices: patients rendered, prepared as the converter prepares an MR,
and cut in three planes (the demo-model script's data).

Each patient is drawn from (seed, index) alone, so any subset renders the same in any order and
in any number of processes.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from bonect.phantom.generate import ORIENTATIONS, Acquisition, PhantomCase, generate_case
from bonect.phantom.variation import Family
from bonect.trainer.cache import plane_slices


def slice_pairs(
    seed: int,
    indices: Sequence[int],
    size: int,
    *,
    family: Family = "wide",
    min_fraction: float = 0.04,
    context: int = 0,
    workers: int = 1,
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float16]]:
    """Model inputs (n, 2·context + 1, size, size) and targets (n, size, size), in [0, 1],
    from phantom patients, three planes each.

    With `workers` > 1 the patients render in that many processes; each patient is drawn from
    (seed, index) alone, so the arrays are the same as from one.
    """
    render = functools.partial(
        _patient_slices, seed, family=family, size=size, min_fraction=min_fraction, context=context
    )
    progress = functools.partial(tqdm, total=len(indices), desc="phantom patients", unit="patient")
    if workers <= 1 or len(indices) <= 1:
        pairs = list(progress(map(render, indices)))
    else:
        spawn = multiprocessing.get_context("spawn")  # no fork of a process with torch threads
        with ProcessPoolExecutor(min(workers, len(indices)), mp_context=spawn) as pool:
            pairs = list(progress(pool.map(render, indices)))
    return np.concatenate([x for x, _ in pairs]), np.concatenate([y for _, y in pairs])


def _patient_slices(
    seed: int, index: int, *, family: Family, size: int, min_fraction: float, context: int
) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float16]]:
    case = phantom_case(seed, index, family)
    arrays = plane_slices(case.mr, case.ct_on_mr, size, min_fraction, context)
    return arrays["inputs"], arrays["targets"]


def phantom_case(seed: int, index: int, family: Family) -> PhantomCase:
    """Patient ``index``: the classic family on a fixed ZTE acquisition (the earlier bundled
    model's data), any other family with technique and acquisition drawn."""
    if family == "classic":
        orientation = ORIENTATIONS[index % len(ORIENTATIONS)]
        acquisition = Acquisition(orientation, (2.0, 1.6, 1.6))
        return generate_case(seed, index, acquisition=acquisition, ct_acquisition=None)
    return generate_case(seed, index, acquisition=None, ct_acquisition=None, family=family)
