"""Targets for :func:`bonect.trainer.parallel.launch` in tests.

A spawned rank imports its target by module name; pytest imports test modules with
``--import-mode=importlib``, under names a new process cannot import, so the targets live here
(``tests`` is on the ``pythonpath``, which the ranks inherit).
"""

from __future__ import annotations

import logging

import torch

from bonect.trainer.parallel import Ranks


def greet(ranks: Ranks, device: torch.device, times: int) -> int:
    """Log `times` WARNING records naming this rank; return the rank."""
    for n in range(times):
        logging.getLogger("bonect.test").warning("rank %d on %s: %d", ranks.rank, device, n)
    return ranks.rank
