"""Which training slices each epoch visits, in which order and batches.

By default an epoch visits every training slice once, shuffled. When the training set mixes the
local site with external sites and ``balance_sites`` is on, an epoch of the same length draws
half of its slices from the local site and half from the external ones, so that a few local
patients are not drowned by many external ones: the smaller group is repeated (each of its
slices an equal number of times, give or take one), the larger is subsampled without
repetition. The order of every epoch is seeded from ``(seed, epoch)``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bonect.trainer.cache import CachedPair, SliceIndex

Indices = npt.NDArray[np.int64]


def site_of(pair_key: str) -> str:
    """The site of a pair key ``<site>/<case>``."""
    return pair_key.split("/", 1)[0]


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class EpochSampler:
    """The batches of every epoch over a fixed set of training slices."""

    train: Indices  # global slice indices of the training set
    local: npt.NDArray[np.bool_]  # per training slice: from a local site
    batch_size: int
    seed: int
    steps_per_epoch: int | None = None  # cap on batches per epoch
    balance: bool = False

    @classmethod
    def for_pairs(
        cls,
        pairs: Sequence[CachedPair],
        index: SliceIndex,
        train: Indices,
        *,
        local_sites: Collection[str],
        balance: bool,
        batch_size: int,
        seed: int,
        steps_per_epoch: int | None = None,
    ) -> EpochSampler:
        """A sampler over `train`, the slices of pairs of `local_sites` counting as local."""
        local_pairs = [i for i, p in enumerate(pairs) if site_of(p.source.key) in local_sites]
        local = np.isin(train, index.of_pairs(local_pairs))
        return cls(train, local, batch_size, seed, steps_per_epoch, balance)

    @property
    def balanced(self) -> bool:
        """Whether epochs draw local and external slices in equal share (both are present)."""
        return self.balance and bool(self.local.any()) and not bool(self.local.all())

    def order(self, epoch: int) -> Indices:
        """The slices of `epoch` in the order they are visited."""
        rng = np.random.default_rng([self.seed, 3, epoch])
        if not self.balanced:
            return rng.permutation(self.train)
        half = len(self.train) // 2
        local = _draw(rng, self.train[self.local], half)
        external = _draw(rng, self.train[~self.local], len(self.train) - half)
        return rng.permutation(np.concatenate([local, external]))

    def batches(self, epoch: int) -> list[Indices]:
        """The batches of `epoch` (a last batch of one slice is dropped: batch norm needs two)."""
        order, size = self.order(epoch), self.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        if len(batches) > 1 and len(batches[-1]) < 2:
            batches.pop()
        return batches[: self.steps_per_epoch]


def _draw(rng: np.random.Generator, pool: Indices, n: int) -> Indices:
    """`n` slices of `pool`: whole shuffled passes over it, then part of one more."""
    passes = -(-n // len(pool))
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]
