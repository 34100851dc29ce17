"""Epoch sampling: local and external slices in equal share when balanced, else each slice once."""

from __future__ import annotations

import numpy as np
import pytest

from bonect.trainer.cache import CachedPair, PairSource, SliceIndex
from bonect.trainer.sampling import EpochSampler, site_of


def _pair(key: str, slices: int) -> CachedPair:
    inputs, targets = np.zeros((slices, 1, 4, 4), np.float16), np.zeros((slices, 4, 4), np.float16)
    source = PairSource(key, f"patient-{key}", mr=None, ct=None)  # type: ignore[arg-type]
    return CachedPair(source, inputs, targets, np.zeros(slices, np.int8), cache_key=key)


@pytest.fixture
def pairs() -> list[CachedPair]:
    """One local pair of 10 slices among external pairs of 90 slices in all."""
    return [_pair("ext-a/p1", 40), _pair("local/p2", 10), _pair("ext-b/p3", 50)]


def _sampler(pairs: list[CachedPair], *, balance: bool, **kwargs: int) -> EpochSampler:
    index = SliceIndex(pairs)
    train = np.arange(len(index), dtype=np.int64)
    return EpochSampler.for_pairs(
        pairs, index, train, local_sites={"local"}, balance=balance, batch_size=8, seed=3, **kwargs
    )


def test_a_balanced_epoch_draws_local_and_external_slices_half_and_half(
    pairs: list[CachedPair],
) -> None:
    sampler = _sampler(pairs, balance=True)
    local = set(range(40, 50))  # the global indices of the local pair's slices
    assert sampler.balanced
    for epoch in (1, 2):
        order = sampler.order(epoch)
        assert len(order) == 100  # an epoch as long as the training set
        from_local = [i for i in order.tolist() if i in local]
        assert len(from_local) == 50
        assert np.bincount(from_local, minlength=50)[40:].tolist() == [5] * 10  # each 5 times
        external = [i for i in order.tolist() if i not in local]
        assert len(external) == len(set(external)) == 50  # subsampled, none twice
    assert not np.array_equal(sampler.order(1), sampler.order(2))
    assert np.array_equal(sampler.order(1), _sampler(pairs, balance=True).order(1))  # seeded
    batches = sampler.batches(1)
    assert [len(b) for b in batches] == [8] * 12 + [4]
    assert np.array_equal(np.concatenate(batches), sampler.order(1))


def test_without_balance_every_slice_is_visited_once(pairs: list[CachedPair]) -> None:
    sampler = _sampler(pairs, balance=False, steps_per_epoch=3)
    assert not sampler.balanced
    assert sorted(sampler.order(1).tolist()) == list(range(100))
    assert len(sampler.batches(1)) == 3


def test_one_group_alone_is_not_balanced(pairs: list[CachedPair]) -> None:
    external_only = [pairs[0], pairs[2]]
    sampler = _sampler(external_only, balance=True)
    assert not sampler.balanced
    assert sorted(sampler.order(1).tolist()) == list(range(90))


def test_site_of_a_pair_key() -> None:
    assert site_of("hospital-b/case-7") == "hospital-b"
