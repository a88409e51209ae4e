"""One contract suite for every detector (DESIGN.md; STYLE.md items 2 and 8).

A new detector joins by adding a factory to DETECTORS and a data maker if it needs one.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from helpers import HOUR
from netsentry.detect.base import Detector, NotMergeableError, StateMismatchError
from netsentry.detect.batch import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
)
from netsentry.detect.changepoint import ChangePoint
from netsentry.detect.hst import HalfSpaceTrees
from netsentry.detect.ocsvm_online import OnlineOneClassSVM
from netsentry.detect.profile import DeviceForest, DeviceZScore
from netsentry.detect.zscore import ZScore
from netsentry.model import Batch

DETECTORS = {
    "zscore": lambda: ZScore(min_count=3),
    "zscore-greater": lambda: ZScore(min_count=3, alternative="greater", adapt_after=1),
    "changepoint": lambda: ChangePoint(min_count=4),
    "iforest": lambda: IsolationForestDetector(min_count=16, seed=1),
    "lof": lambda: LocalOutlierFactorDetector(min_count=16, seed=1),
    "ocsvm": lambda: OneClassSVMDetector(min_count=16, seed=1),
    "ocsvm_online": lambda: OnlineOneClassSVM(warm_up=64, batch_size=32, seed=1),
    "hst": lambda: HalfSpaceTrees(n_trees=5, height=6, window_size=50, seed=1),
    "device_zscore": lambda: DeviceZScore(features=("m",), min_count=3),
    "device_iforest": lambda: DeviceForest(features=("m",), min_count=16, seed=1),
}


def make_batch(seed: int, rows: int = 200, entities: int = 7, t0: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    src = rng.integers(0, entities, rows)
    values = rng.normal(100, 10, rows) + src * 50
    return Batch.from_columns(
        t0 + np.arange(rows) * HOUR, ["m"] * rows, values, {"src": [f"10.0.0.{s}" for s in src]}
    )


@pytest.fixture(params=sorted(DETECTORS))
def detector(request) -> Detector:
    return DETECTORS[request.param]()


def trained(detector: Detector) -> Detector:
    b = make_batch(1)
    detector.learn(b, np.ones(len(b), dtype=bool))
    return detector


def test_is_a_detector(detector):
    assert isinstance(detector, Detector)
    assert isinstance(detector.name, str)


def test_scoring_is_pure(detector):
    det = trained(detector)
    b = make_batch(2, t0=10_000 * HOUR)
    frame_before, state_before = b.frame.clone(), det.state_dict()
    first = det.score(b)
    second = det.score(b)
    np.testing.assert_array_equal(first, second)
    assert b.frame.equals(frame_before)
    after = det.state_dict()
    for name, value in state_before.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(after[name]))


def test_scores_are_finite_or_inf_never_nan(detector):
    det = trained(detector)
    scores = det.score(make_batch(3, t0=10_000 * HOUR))
    assert scores.dtype == np.float64 and not np.isnan(scores).any()


def test_state_round_trip(detector):
    clone = copy.deepcopy(detector)  # the same configuration, nothing learned
    det = trained(detector)
    clone.load_state(det.state_dict())
    b = make_batch(4, t0=10_000 * HOUR)
    np.testing.assert_array_equal(det.score(b), clone.score(b))


def test_foreign_state_is_refused(detector):
    state = trained(detector).state_dict()
    state["fingerprint"] = "0" * 16
    with pytest.raises(StateMismatchError):
        type(detector)().load_state(state)


def test_empty_and_single_row_batches(detector):
    det = trained(detector)
    empty = Batch.empty()
    assert det.score(empty).shape == (0,)
    det.learn(empty, np.zeros(0, dtype=bool))
    one = make_batch(5, rows=1, t0=20_000 * HOUR)
    assert det.score(one).shape == (1,)
    det.learn(one, np.ones(1, dtype=bool))


def test_mask_must_match_batch(detector):
    with pytest.raises(ValueError, match="mask"):
        detector.learn(make_batch(6), np.ones(3, dtype=bool))


def test_merge_equals_one_pass_over_the_union(detector):
    a, b = make_batch(7), make_batch(8, t0=5_000 * HOUR)
    if not getattr(detector, "mergeable", True):  # it must say so, not merge wrongly
        left, right = detector, copy.deepcopy(detector)
        left.learn(a, np.ones(len(a), dtype=bool))
        right.learn(b, np.ones(len(b), dtype=bool))
        with pytest.raises(NotMergeableError):
            left.merge(right)
        return
    whole = DETECTORS["zscore"]()
    union = Batch.concat([a, b])
    whole.learn(union, np.ones(len(union), dtype=bool))
    left, right = DETECTORS["zscore"](), DETECTORS["zscore"]()
    left.learn(a, np.ones(len(a), dtype=bool))
    right.learn(b, np.ones(len(b), dtype=bool))
    merged = left.merge(right)
    probe = make_batch(9, t0=9_000 * HOUR)
    np.testing.assert_allclose(merged.score(probe), whole.score(probe), rtol=1e-10)


def test_deterministic_for_the_same_input(detector):
    """zscore owns no random generator: the same data gives the same state, bit for bit."""
    a, b = trained(DETECTORS["zscore"]()), trained(DETECTORS["zscore"]())
    for name, value in a.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(b.state_dict()[name]))
