"""Online One-Class SVM: warm-up, prequential semantics, bounded memory, the SGD against
the exact solution, drift, state, and river's OneClassSVM on the same streams."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from river import anomaly, feature_extraction
from sklearn.metrics import roc_auc_score
from sklearn.svm import OneClassSVM

from helpers import HOUR
from netsentry.detect.base import NotMergeableError, StateMismatchError
from netsentry.detect.ocsvm_online import OnlineOneClassSVM
from netsentry.model import Batch

HTTP = Path(__file__).parent / "data" / "odds_http_460k_520k.csv.gz"


def blob(n: int, seed: int = 0, center: float = 0.5) -> np.ndarray:
    return np.random.default_rng(seed).normal(center, 0.05, (n, 2))


def ring(n: int = 3000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points on a ring; 60 anomalies at its centre after the first 500 (not linearly
    separable: a linear one-class SVM cannot find them)."""
    rng = np.random.default_rng(seed)
    angle, radius = rng.uniform(0, 2 * np.pi, n), rng.normal(0.35, 0.03, n)
    x = np.c_[0.5 + radius * np.cos(angle), 0.5 + radius * np.sin(angle)]
    labels = np.zeros(n)
    odd = rng.choice(np.arange(500, n), 60, replace=False)
    labels[odd] = 1
    x[odd] = rng.normal(0.5, 0.05, (60, 2))
    return x, labels


def odds_http() -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(HTTP, "rt") as text:
        data = np.loadtxt(text, delimiter=",", skiprows=1)
    x, labels = data[:, :3], data[:, 3]
    low, high = x.min(axis=0), x.max(axis=0)
    return (x - low) / (high - low), labels


def river_prequential(model, x: np.ndarray) -> tuple[np.ndarray, float]:
    points = [dict(enumerate(row)) for row in x.tolist()]
    scores = np.empty(len(points))
    start = time.perf_counter()
    for i, point in enumerate(points):
        scores[i] = model.score_one(point)
        model.learn_one(point)
    return scores, time.perf_counter() - start


def test_warm_up_scores_zero_then_the_model_starts():
    svm = OnlineOneClassSVM(warm_up=100, batch_size=32, seed=0)
    assert svm.score_many(blob(5)).tolist() == [0.0] * 5 and not svm.warm_
    svm.learn_many(blob(99))
    assert not svm.warm_ and (svm.score_many(blob(5)) == 0).all()
    svm.learn_many(blob(1, seed=1))
    assert svm.warm_ and svm.state_dict()["kept"].shape == (0, 2)  # warm-up points dropped
    scores = OnlineOneClassSVM(warm_up=100, seed=0).score_learn(blob(300))
    assert (scores[:100] == 0).all() and (scores[100:] != 0).all()


def test_scoring_is_pure():
    svm = OnlineOneClassSVM(warm_up=64, seed=0)
    svm.learn_many(blob(500))
    before = svm.state_dict()
    probe = blob(50, seed=3)
    np.testing.assert_array_equal(svm.score_many(probe), svm.score_many(probe))
    for name, value in svm.state_dict().items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(before[name]))


def test_score_learn_is_score_then_learn_per_mini_batch():
    x = blob(1000)
    whole = OnlineOneClassSVM(warm_up=100, batch_size=50, seed=2)
    got = whole.score_learn(x)
    step = OnlineOneClassSVM(warm_up=100, batch_size=50, seed=2)
    step.learn_many(x[:100])
    expected = [np.zeros(100)]
    for start in range(100, len(x), 50):
        expected.append(step.score_many(x[start : start + 50]))
        step.learn_many(x[start : start + 50])
    np.testing.assert_array_equal(got, np.concatenate(expected))


def test_chunking_does_not_matter_on_mini_batch_boundaries():
    x = blob(2000)
    one = OnlineOneClassSVM(warm_up=200, batch_size=100, seed=4)
    one.learn_many(x)
    parts = OnlineOneClassSVM(warm_up=200, batch_size=100, seed=4)
    for piece in np.split(x, [150, 200, 700, 1300]):  # 150 + 50 complete the warm-up
        parts.learn_many(piece)
    probe = blob(30, seed=9)
    np.testing.assert_array_equal(one.score_many(probe), parts.score_many(probe))


def test_memory_does_not_grow_with_the_stream():
    svm = OnlineOneClassSVM(seed=0)
    sizes = []
    for n in (1_000, 50_000):
        svm.learn_many(blob(n, seed=n))
        sizes.append(sum(np.asarray(v).nbytes for v in svm.state_dict().values()))
    assert sizes[0] == sizes[1] < 10_000


def test_sgd_finds_the_exact_linear_solution_on_its_features():
    """Same random features: the SGD's w points where scikit-learn's exact solver's does."""
    x = blob(3000)
    svm = OnlineOneClassSVM(
        warm_up=3000, epochs=30, batch_size=100, window=3000, gamma=50.0, seed=1
    )
    svm.learn_many(x)
    z = svm._z(x).astype(np.float64)
    exact = OneClassSVM(kernel="linear", nu=svm.nu).fit(z).coef_[0]
    cosine = exact @ svm.w_ / np.linalg.norm(exact) / np.linalg.norm(svm.w_)
    assert cosine > 0.99
    assert abs((z @ svm.w_ < svm.rho_).mean() - svm.nu) < 0.02  # nu of the points outside


def test_windows_follow_a_drift():
    """After a few windows of a new regime, its points score as the old regime's did."""
    svm = OnlineOneClassSVM(warm_up=200, window=2000, seed=3)
    svm.learn_many(blob(3000, center=0.3))
    old, new = blob(200, seed=5, center=0.3), blob(200, seed=5, center=0.7)
    usual, before = svm.score_many(old).mean(), svm.score_many(new).mean()
    svm.learn_many(blob(8000, seed=6, center=0.7))
    after = svm.score_many(new).mean()
    assert before > usual + 0.05 and abs(after - usual) < 0.06
    assert svm.score_many(old).mean() > after + 0.1


def test_state_round_trip_merge_and_refusals():
    svm = OnlineOneClassSVM(warm_up=64, seed=8)
    svm.learn_many(blob(1000))
    clone = OnlineOneClassSVM(warm_up=64, seed=8)
    clone.load_state(svm.state_dict())
    x = blob(700, seed=1)
    np.testing.assert_array_equal(clone.score_learn(x), svm.score_learn(x))
    cold = OnlineOneClassSVM(warm_up=64, seed=8)
    cold.learn_many(blob(10))
    again = OnlineOneClassSVM(warm_up=64, seed=8)
    again.load_state(cold.state_dict())  # mid-warm-up state round-trips too
    np.testing.assert_array_equal(again.score_learn(x), cold.score_learn(x))
    with pytest.raises(StateMismatchError):
        OnlineOneClassSVM(warm_up=64, seed=9).load_state(svm.state_dict())
    with pytest.raises(NotMergeableError, match="shard by key"):
        svm.merge(clone)
    with pytest.raises(ValueError, match="features"):
        svm.score_many(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="need"):
        OnlineOneClassSVM(nu=0.0)


def test_seeds_are_owned():
    x = blob(800)
    a, b = (OnlineOneClassSVM(warm_up=64, seed=1).score_learn(x) for _ in range(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, OnlineOneClassSVM(warm_up=64, seed=2).score_learn(x))


def test_batch_contract_learns_in_time_order():
    rows = 600
    values = np.random.default_rng(0).lognormal(5, 0.3, rows)
    batch = Batch.from_columns(np.arange(rows)[::-1] * HOUR, ["m"] * rows, values, {})
    svm = OnlineOneClassSVM(warm_up=128, seed=0)
    svm.learn(batch, np.ones(rows, dtype=bool))
    assert svm.warm_ and svm.seen_ == rows
    probe = Batch.from_columns([0, 0], ["m", "m"], [float(np.exp(5)), 1e9], {})
    usual, huge = svm.score(probe)
    assert huge > usual


def test_against_river_on_a_ring_same_gamma_and_features():
    """A kernel is needed here; river's RBFSampler | OneClassSVM has one but its SGD
    does not find the centre in 3,000 points; ours does, hundreds of times faster."""
    x, labels = ring()
    start = time.perf_counter()
    ours = OnlineOneClassSVM(gamma=50.0, n_components=128, seed=1).score_learn(x)
    ours_s = time.perf_counter() - start
    kernel = feature_extraction.RBFSampler(gamma=50.0, n_components=128, seed=1)
    river_rbf, river_s = river_prequential(kernel | anomaly.OneClassSVM(nu=0.1), x)
    river_linear, _ = river_prequential(anomaly.OneClassSVM(nu=0.1), x)
    assert roc_auc_score(labels, ours) > 0.99
    assert roc_auc_score(labels, river_rbf) < 0.7 and roc_auc_score(labels, river_linear) < 0.7
    assert river_s / ours_s > 50


def test_against_river_on_odds_http():
    """Attacks on http are extreme in magnitude, so river's linear model suffices there:
    both reach 0.99 (river 0.9975, ours 0.9898 on this cut); ours is faster."""
    x, labels = odds_http()
    start = time.perf_counter()
    ours = OnlineOneClassSVM(seed=1).score_learn(x)
    ours_s = time.perf_counter() - start
    river, river_s = river_prequential(anomaly.OneClassSVM(nu=0.1), x)
    assert roc_auc_score(labels, ours) > 0.985 and roc_auc_score(labels, river) > 0.99
    assert river_s > ours_s
