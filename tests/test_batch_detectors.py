"""Isolation Forest, LOF and One-Class SVM per segment: warm-up, segments, reservoir,
refit schedule, seeding, state without pickle, merge, thresholds, and quality."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from helpers import HOUR
from netsentry.detect.base import NotMergeableError, StateMismatchError
from netsentry.detect.batch import (
    IsolationForestDetector,
    LocalOutlierFactorDetector,
    OneClassSVMDetector,
)
from netsentry.detect.quantile import QuantileThreshold
from netsentry.detect.segment_features import (
    reservoir_update,
    segment_features,
    segment_labels,
    standardise,
)
from netsentry.detect.zscore import ZScore
from netsentry.model import Batch

HTTP = Path(__file__).parent / "data" / "odds_http_460k_520k.csv.gz"
KINDS = [IsolationForestDetector, LocalOutlierFactorDetector, OneClassSVMDetector]


def traffic(seed: int, rows: int = 400, t0: int = 0, services=("dns", "web")) -> Batch:
    """Two services on different scales: dns ~ 1e2, web ~ 1e5 bytes, 8 entities each."""
    rng = np.random.default_rng(seed)
    service = rng.choice(list(services), rows)
    scale = np.where(service == "dns", 100.0, 100_000.0)
    src = rng.integers(0, 8, rows)
    return Batch.from_columns(
        t0 + np.arange(rows) * HOUR // 4,
        ["bytes"] * rows,
        scale * rng.lognormal(0, 0.2, rows),
        {"service": service.tolist(), "src": [f"10.0.0.{s}" for s in src]},
    )


def learned(cls, seed: int = 1, **kwargs):
    det = cls(min_count=32, seed=seed, **kwargs)
    b = traffic(seed)
    det.learn(b, np.ones(len(b), dtype=bool))
    return det


@pytest.mark.parametrize("cls", KINDS)
def test_warm_up_scores_zero_until_min_count(cls):
    det = cls(min_count=50, seed=0)
    small = traffic(0, rows=60)  # ~30 rows per service: below min_count
    det.learn(small, np.ones(len(small), dtype=bool))
    assert (det.score(small) == 0).all() and not det.judged(small).any()
    more = traffic(1, rows=200, t0=100 * HOUR)
    det.learn(more, np.ones(len(more), dtype=bool))
    assert det.judged(more).all() and (det.score(more) > 0).all()


@pytest.mark.parametrize("cls", KINDS)
def test_each_segment_has_its_own_model(cls):
    """5,000 bytes: far above dns, far below web. Each service's model sees it."""
    det = learned(cls)
    probe = Batch.from_columns(
        [0, 0, 0, 0],
        ["bytes"] * 4,
        [5000.0, 100.0, 5000.0, 100_000.0],
        {"service": ["dns", "dns", "web", "web"], "src": ["10.0.0.1"] * 4},
    )
    dns_odd, dns_usual, web_odd, web_usual = det.score(probe)
    assert dns_odd > dns_usual and web_odd > web_usual
    unseen = Batch.from_columns([0], ["bytes"], [1.0], {"service": ["ssh"]})
    assert det.score(unseen).tolist() == [0.0]


@pytest.mark.parametrize("cls", KINDS)
def test_learning_one_segment_leaves_the_others_alone(cls):
    det = learned(cls)
    probe = traffic(9, services=("web",))
    before = det.score(probe)
    dns = traffic(3, services=("dns",))
    det.learn(dns, np.ones(len(dns), dtype=bool))
    np.testing.assert_array_equal(det.score(probe), before)


def serial_algorithm_r(sample, seen, x, capacity, draws):
    out = list(sample)
    for i, row in enumerate(x):
        index = seen + i
        if index < capacity:
            out.append(row)
        elif draws[i] < capacity:
            out[draws[i]] = row
    return np.array(out).reshape(-1, x.shape[1])


@settings(max_examples=40, deadline=None)
@given(
    capacity=st.integers(1, 20),
    first=st.integers(0, 40),
    second=st.integers(0, 60),
    seed=st.integers(0, 1000),
)
def test_reservoir_equals_the_serial_algorithm_r(capacity, first, second, seed):
    x = np.arange(first + second, dtype=float)[:, None]
    sample = np.zeros((0, 1))
    for seen, part in ((0, x[:first]), (first, x[first:])):
        index = seen + np.arange(len(part))
        draws = np.random.default_rng(seed).integers(0, index + 1)
        expected = serial_algorithm_r(sample, seen, part, capacity, draws)
        sample = reservoir_update(sample, seen, part, capacity, np.random.default_rng(seed))
        np.testing.assert_array_equal(sample, expected)
    assert len(sample) == min(capacity, first + second)


def test_reservoir_is_a_uniform_sample():
    """Every row of 100 is kept with probability 10/100, whatever the batch cut."""
    kept = np.zeros(100)
    x = np.arange(100.0)[:, None]
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        sample = reservoir_update(np.zeros((0, 1)), 0, x[:37], 10, rng)
        sample = reservoir_update(sample, 37, x[37:], 10, rng)
        kept[sample[:, 0].astype(int)] += 1
    share = kept / 2000
    assert abs(share.mean() - 0.1) < 1e-12 and share.min() > 0.06 and share.max() < 0.14
    assert abs(share[:50].mean() - share[50:].mean()) < 0.01


def test_memory_is_bounded_by_the_capacity():
    det = IsolationForestDetector(capacity=100, min_count=10, seed=0)
    for i in range(5):
        b = traffic(i, rows=500, t0=i * 1000 * HOUR)
        det.learn(b, np.ones(len(b), dtype=bool))
    state = det.state_dict()
    assert state["sample"].shape == (200, 4) and state["model.train"].shape == (200, 4)
    assert state["counters"][:, 0].sum() == 2500  # rows seen


def test_refit_every_k_checks_and_only_with_new_rows():
    det = IsolationForestDetector(min_count=32, refit_every=3, seed=0)
    fits = []
    for i in range(7):
        b = traffic(i, t0=i * 1000 * HOUR, services=("dns",))
        det.learn(b, np.ones(len(b), dtype=bool))
        fits.append(int(det.state_dict()["counters"][0, 3]))
    assert fits == [1, 1, 1, 2, 2, 2, 3]
    nothing = traffic(0, services=("dns",))
    for _ in range(5):
        det.learn(nothing, np.zeros(len(nothing), dtype=bool))
    assert int(det.state_dict()["counters"][0, 3]) == 3


@pytest.mark.parametrize("cls", KINDS)
def test_seeded(cls):
    probe = traffic(7)
    a, b = learned(cls, seed=5), learned(cls, seed=5)
    np.testing.assert_array_equal(a.score(probe), b.score(probe))
    if cls is IsolationForestDetector:  # LOF and OCSVM fits draw nothing at random
        assert not np.array_equal(a.score(probe), learned(cls, seed=6).score(probe))


@pytest.mark.parametrize("cls", KINDS)
def test_state_is_plain_arrays_and_round_trips(cls):
    det = learned(cls, capacity=150)
    more = traffic(2, t0=500 * HOUR)
    det.learn(more, np.ones(len(more), dtype=bool))
    state = det.state_dict()
    for name, value in state.items():
        assert isinstance(value, (str, np.ndarray)), name
        assert not isinstance(value, np.ndarray) or value.dtype.kind in "iufbU", name
    clone = cls(min_count=32, seed=1, capacity=150)
    clone.load_state({k: np.copy(v) if isinstance(v, np.ndarray) else v for k, v in state.items()})
    probe = traffic(8)
    np.testing.assert_array_equal(clone.score(probe), det.score(probe))
    again = traffic(4, t0=900 * HOUR)  # and they keep learning alike
    for d in (det, clone):
        d.learn(again, np.ones(len(again), dtype=bool))
    np.testing.assert_array_equal(clone.score(probe), det.score(probe))
    with pytest.raises(StateMismatchError):
        cls(min_count=33, seed=1, capacity=150).load_state(state)


def test_scores_are_the_papers_scores_as_scikit_learn_computes_them():
    x = np.random.default_rng(0).normal(size=(300, 3))
    probe = np.random.default_rng(1).normal(size=(50, 3)) * 2
    forest = IsolationForest(max_samples=256, random_state=11).fit(x)
    ours = IsolationForestDetector().fit_scorer(x, random_state=11)(probe)
    np.testing.assert_allclose(ours, -forest.score_samples(probe))
    center, scale = standardise(x)
    svm = OneClassSVM(nu=0.1, gamma="scale").fit((x - center) / scale)
    expected = 1 - svm.score_samples((probe - center) / scale) / svm.dual_coef_.sum()
    got = OneClassSVMDetector().fit_scorer(x)(probe)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    boundary = 1 - (-svm.intercept_[0]) / svm.dual_coef_.sum()
    inside = svm.decision_function((probe - center) / scale) > 0
    assert ((got < boundary) == inside).all()


@pytest.mark.parametrize("cls", KINDS)
def test_merge_joins_disjoint_segments_and_refuses_shared_ones(cls):
    dns, web = traffic(1, services=("dns",)), traffic(2, services=("web",))
    left, right, whole = (cls(min_count=32, seed=3) for _ in range(3))
    left.learn(dns, np.ones(len(dns), dtype=bool))
    right.learn(web, np.ones(len(web), dtype=bool))
    both = Batch.concat([dns, web])
    whole.learn(both, np.ones(len(both), dtype=bool))
    probe = traffic(5)
    np.testing.assert_array_equal(left.merge(right).score(probe), whole.score(probe))
    with pytest.raises(NotMergeableError, match="shard by segment"):
        left.merge(left)
    with pytest.raises(NotMergeableError, match="configuration"):
        left.merge(cls(min_count=32, seed=4))


def test_z_feature_sees_what_is_unusual_for_one_entity():
    """A value ordinary for the service but ten sigmas off for its entity."""
    rng = np.random.default_rng(0)
    rows = 800
    src = rng.integers(0, 8, rows)
    values = 1000.0 * (1 + src) + rng.normal(0, 10, rows)  # each entity at its own level
    batch = Batch.from_columns(
        np.arange(rows) * HOUR, ["m"] * rows, values, {"src": src.astype(str)}
    )
    baseline = ZScore()
    baseline.learn(batch, np.ones(rows, dtype=bool))
    odd = Batch.from_columns([rows * HOUR], ["m"], [3000.0], {"src": ["0"]})  # src 0 lives at 1000
    usual = Batch.from_columns([rows * HOUR], ["m"], [3000.0], {"src": ["2"]})
    for with_z, expect in ((True, True), (False, False)):
        det = IsolationForestDetector(baseline=baseline if with_z else None, seed=0)
        det.learn(batch, np.ones(rows, dtype=bool))
        assert bool(det.score(odd)[0] > det.score(usual)[0] + 0.1) is expect
    assert segment_features(odd, baseline)[0, 1] == 50.0  # z = +200, clipped


def test_explain_names_the_feature_that_stands_out():
    det = learned(OneClassSVMDetector)
    probe = Batch.from_columns([0], ["bytes"], [1e9], {"service": ["dns"]})
    found = det.explain(probe)
    assert found["feature"].to_list() == ["log_value"] and found["deviation"][0] > 10


def test_quantile_threshold_per_segment_on_reference_scores():
    det = learned(IsolationForestDetector)
    scores, groups = det.reference_scores()
    assert sorted(set(groups.tolist())) == ["bytes/dns", "bytes/web"]
    threshold = QuantileThreshold(q=0.9).fit(scores, groups)
    assert set(threshold.thresholds_) == {"bytes/dns", "bytes/web"}
    assert 0.09 < threshold.flags(scores, groups).mean() < 0.11
    clone = QuantileThreshold(q=0.9)
    clone.load_state(threshold.state_dict())
    assert clone.thresholds_ == threshold.thresholds_
    assert clone.threshold(np.array(["other"])).tolist() == [threshold.overall_]
    with pytest.raises(StateMismatchError):
        QuantileThreshold(q=0.5).load_state(threshold.state_dict())
    with pytest.raises(ValueError, match="q must"):
        QuantileThreshold(q=1.0)
    assert not QuantileThreshold().flags(np.array([1e9])).any()  # never fitted: never flags
    probe = traffic(11)
    groups = segment_labels(probe)
    assert set(groups.tolist()) == {"bytes/dns", "bytes/web"}
    assert threshold.flags(det.score(probe), groups).mean() < 0.2


def test_isolation_forest_on_odds_http_from_a_reservoir():
    """Fitted on 2,048 rows drawn as a segment's reservoir, scored on all 60,000."""
    with gzip.open(HTTP, "rt") as text:
        data = np.loadtxt(text, delimiter=",", skiprows=1)
    x, labels = data[:, :3], data[:, 3]
    sample = reservoir_update(np.zeros((0, 3)), 0, x, 2048, np.random.default_rng(0))
    scores = IsolationForestDetector().fit_scorer(sample, random_state=1)(x)
    assert roc_auc_score(labels, scores) > 0.99
