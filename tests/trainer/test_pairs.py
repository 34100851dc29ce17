"""Pairs are registered once, scored, and those that fail or score low are listed, never used."""

from __future__ import annotations

import numpy as np
import pytest

from bonect.phantom.generate import Acquisition, generate_case
from bonect.trainer.pairs import RECORD, PairStatus, format_pairs, register_pairs
from bonect.trainer.sites import Pair, SiteStore

COARSE = Acquisition("axial", (4.0, 4.0, 4.0))


@pytest.fixture(scope="module")
def site_pairs(tmp_path_factory: pytest.TempPathFactory) -> tuple[SiteStore, list[Pair]]:
    store = SiteStore(tmp_path_factory.mktemp("trainer"))
    site = store.create_site("s", "phantom", "test")
    good = generate_case(41, 0, contrast="zte", acquisition=COARSE, ct_acquisition=COARSE)
    assert good.ct is not None
    noise = good.ct.with_array(
        np.random.default_rng(0).uniform(-1000, 2000, good.ct.shape).astype(np.float32)
    )
    pairs = [
        store.add_pair(site, "good", patient_key="k1", mr=good.mr, ct=good.ct, ct_on_mr_grid=False),
        store.add_pair(site, "noise", patient_key="k2", mr=good.mr, ct=noise, ct_on_mr_grid=False),
        store.add_pair(
            site, "given", patient_key="k3", mr=good.mr, ct=good.ct_on_mr, ct_on_mr_grid=True
        ),
    ]
    return store, pairs


def test_good_pairs_are_usable_and_a_failed_one_is_listed_with_its_reason(
    site_pairs: tuple[SiteStore, list[Pair]],
) -> None:
    _, pairs = site_pairs
    states = register_pairs(pairs, 0.7, progress=False)
    by_case = {s.pair.case: s for s in states}
    assert by_case["good"].status is PairStatus.USABLE
    assert by_case["good"].score is not None and by_case["good"].score > 0.7
    assert by_case["good"].overlay.is_file() and by_case["good"].ct_on_mr.is_file()
    assert by_case["given"].status is PairStatus.USABLE  # already on the MR grid: scored only
    assert by_case["noise"].status in (PairStatus.FAILED, PairStatus.SET_ASIDE)
    assert by_case["noise"].reason
    table = format_pairs(states)
    assert "| s/noise |" in table and by_case["noise"].reason in table


def test_a_higher_threshold_sets_a_pair_aside_without_registering_again(
    site_pairs: tuple[SiteStore, list[Pair]],
) -> None:
    _, pairs = site_pairs
    good = pairs[0]
    register_pairs([good], 0.7, progress=False)
    stamp = (good.folder / RECORD).stat().st_mtime_ns
    (state,) = register_pairs([good], 0.99, progress=False)
    assert state.status is PairStatus.SET_ASIDE
    assert "under the threshold 0.990" in state.reason
    assert (good.folder / RECORD).stat().st_mtime_ns == stamp  # same inputs: not redone
