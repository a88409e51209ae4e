"""Change-point detection (issue 5): threshold, statistic, segmentation, streaming detector.

The stage-2 bounds are in ``test_changepoint_stage2.py``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from helpers import HOUR, all_rows, series
from netsentry.detect.changepoint import (
    ChangePoint,
    NotMergeableError,
    brodsky_darkhovsky,
    critical_value,
    distribution_test,
    indicator_sequences,
    kolmogorov_sf,
    long_run_std,
    max_statistic,
    segment,
)
from netsentry.detect.changepoint.distribution import distribution_split_test
from netsentry.detect.changepoint.kolmogorov import window_critical_value
from netsentry.detect.changepoint.segment import stage1_levels
from netsentry.detect.changepoint.statistic import exceedance, split_test
from netsentry.detect.zscore import ZScore
from netsentry.model import Batch

NAB = Path(__file__).parent / "data" / "nab"


def ar1(rng: np.random.Generator, runs: int, n: int, phi: float) -> np.ndarray:
    """``runs`` stationary AR(1) series of length ``n`` (unit innovations)."""
    e = rng.normal(size=(runs, n + 50))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - phi * phi)
    for t in range(1, n + 50):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x[:, 50:]


def window_exceedance(x: np.ndarray, alpha: float, long_run: bool, min_count: int = 8) -> float:
    """The stage-1 exceedance of one window, as the segmenter and the detector compute it."""
    stat, _, sigma = split_test(np.ascontiguousarray(x), min_count, 1.0, 0, long_run, 0)
    return exceedance(stat, sigma, window_critical_value(alpha, len(x), "two-sided", long_run))


# -- the Kolmogorov threshold ---------------------------------------------------------


@pytest.mark.parametrize(
    "alpha, c", [(0.20, 1.0727), (0.10, 1.2238), (0.05, 1.3581), (0.01, 1.6276), (0.001, 1.9495)]
)
def test_critical_values_match_the_kolmogorov_table(alpha, c):
    assert critical_value(alpha) == pytest.approx(c, abs=1e-4)
    assert kolmogorov_sf(critical_value(alpha)) == pytest.approx(alpha, rel=1e-9)


@pytest.mark.parametrize("c", [0.3, 0.5, 0.6, 0.8, 1.0, 1.5])
def test_kolmogorov_tail_agrees_with_its_theta_form(c):
    series_form = 2 * sum((-1) ** (k + 1) * math.exp(-2 * k * k * c * c) for k in range(1, 200))
    theta = sum(math.exp(-((2 * k - 1) ** 2) * math.pi**2 / (8 * c * c)) for k in range(1, 50))
    theta_form = 1 - math.sqrt(2 * math.pi) / c * theta
    assert series_form == pytest.approx(theta_form, abs=1e-12)
    assert kolmogorov_sf(c) == pytest.approx(theta_form, abs=1e-12)


def test_one_sided_threshold_and_the_estimated_sigma_correction():
    c = critical_value(0.05, "greater")
    assert math.exp(-2 * c * c) == pytest.approx(0.05)
    assert critical_value(0.05, dof=1e7) == pytest.approx(critical_value(0.05), abs=1e-4)
    assert critical_value(0.05, dof=10) > critical_value(0.05, dof=100) > critical_value(0.05)


def test_long_run_sigma_of_an_ar1_series():
    x = ar1(np.random.default_rng(0), 1, 40_000, 0.6)[0]
    assert long_run_std(x) == pytest.approx(1 / (1 - 0.6), rel=0.08)  # sigma_e / (1 - phi)
    assert long_run_std(x, long_run=False) == pytest.approx(1 / math.sqrt(1 - 0.36), rel=0.05)


# -- the threshold reproduces alpha ---------------------------------------------------

RUNS = 2000
ALPHA = 0.05
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)  # three binomial standard errors


@pytest.mark.parametrize(
    "n, phi, long_run",
    [(50, 0.0, False), (200, 0.0, False), (168, 0.5, True), (1000, 0.5, True), (500, 0.8, True)],
)
def test_false_alarm_rate_is_alpha_on_stationary_data(n, phi, long_run):
    x = ar1(np.random.default_rng(n + int(10 * phi)), RUNS, n, phi)
    rate = np.mean([window_exceedance(row, ALPHA, long_run) > 1 for row in x])
    assert abs(rate - ALPHA) <= TOLERANCE, rate


def test_independent_sigma_on_correlated_data_alarms_far_too_often():
    """Why sigma* is a long-run estimate: AR(1) data judged with the plain std."""
    x = ar1(np.random.default_rng(5), 500, 500, 0.5)
    rate = np.mean([window_exceedance(row, ALPHA, long_run=False) > 1 for row in x])
    assert rate > 0.3


def test_distribution_test_false_alarm_rate_is_at_most_alpha():
    x = ar1(np.random.default_rng(6), 1000, 300, 0.0)
    c = critical_value(ALPHA / 9)  # Bonferroni over the 3 x 3 indicators
    rate = np.mean([distribution_split_test(r, np.sort(r), 3, 8, 1.0, False, c)[0] > 1 for r in x])
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 1000)


# -- the statistic --------------------------------------------------------------------

values = st.lists(st.floats(-100, 100, allow_nan=False), min_size=2, max_size=60)


def direct_y(x: np.ndarray, delta: float) -> np.ndarray:
    """Y_N(n, delta) straight from its definition, O(N²)."""
    n_all = len(x)
    return np.array(
        [
            ((n / n_all) * (1 - n / n_all)) ** delta * (x[:n].mean() - x[n:].mean())
            for n in range(1, n_all)
        ]
    )


@settings(max_examples=200, deadline=None)
@given(x=values, delta=st.sampled_from([0.0, 0.25, 0.5, 1.0]))
def test_prefix_sums_equal_the_direct_formula(x, delta):
    arr = np.array(x)
    np.testing.assert_allclose(brodsky_darkhovsky(arr, delta), direct_y(arr, delta), atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(
    x=st.lists(st.floats(-10, 10, allow_nan=False), min_size=20, max_size=80),
    shift=st.sampled_from([0.0, -5.0, 1e3, 1e6]),
    scale=st.sampled_from([1e-3, 0.5, 3.0, 1e4]),
    long_run=st.booleans(),
)
def test_statistic_is_invariant_to_shift_and_scale(x, shift, scale, long_run):
    arr = np.array(x)
    assume(arr.std() > 1e-2)
    stat, n_star, sigma = max_statistic(arr, min_count=4, long_run=long_run)
    stat2, n_star2, sigma2 = max_statistic(shift + scale * arr, min_count=4, long_run=long_run)
    assume(sigma > 1e-6)
    assert n_star2 == n_star
    assert stat2 / sigma2 == pytest.approx(stat / sigma, rel=1e-6)


@settings(max_examples=100, deadline=None)
@given(x=st.lists(st.floats(-10, 10, allow_nan=False), min_size=16, max_size=60))
def test_split_test_is_the_maximum_of_y_over_admissible_splits(x):
    arr, m = np.array(x), 5
    y = brodsky_darkhovsky(arr, 1.0)[m - 1 : len(arr) - m]  # n = m .. N - m
    stat, n_star, _ = max_statistic(arr, min_count=m)
    assert stat == pytest.approx(math.sqrt(len(arr)) * np.abs(y).max(), rel=1e-9, abs=1e-12)
    assert abs(y[n_star - m]) == pytest.approx(np.abs(y).max(), rel=1e-9, abs=1e-12)


def test_values_near_1e9_keep_their_precision():
    x = np.random.default_rng(1).normal(0, 1e-3, 200)
    x[100:] += 2e-3
    assert window_exceedance(1e9 + x, 0.01, True) == pytest.approx(
        window_exceedance(x, 0.01, True), rel=1e-4
    )


def test_zero_variance_rules():
    assert window_exceedance(np.full(40, 7.0), 0.01, True) == 0.0
    assert window_exceedance(np.r_[np.full(20, 1.0), np.full(20, 3.0)], 0.01, True) == math.inf


def test_delta_moves_the_estimate_not_the_test():
    rng = np.random.default_rng(2)
    x = np.r_[rng.normal(0, 1, 30), rng.normal(2, 1, 270)]
    one = max_statistic(x, min_count=8, delta=1.0)
    half = max_statistic(x, min_count=8, delta=0.5)
    assert one[0] == half[0] and one[2] == half[2]  # same T and sigma*
    assert abs(half[1] - 30) <= abs(one[1] - 30) + 2


# -- offline segmentation -------------------------------------------------------------


def mean_shifts(rng: np.random.Generator, sizes: list[float], length: int = 250) -> np.ndarray:
    levels = np.cumsum([0.0, *sizes])
    return np.concatenate([rng.normal(level, 1.0, length) for level in levels])


@pytest.mark.parametrize("seed", range(5))
def test_segment_finds_mean_shifts_with_their_size_and_direction(seed):
    x = mean_shifts(np.random.default_rng(seed), [1.5, -2.0, 1.0])
    changes = segment(x, alpha=0.01)
    assert len(changes) == 3
    for change, truth, size in zip(changes, [250, 500, 750], [1.5, -2.0, 1.0], strict=True):
        assert abs(change.index - truth) <= 15
        assert change.direction == np.sign(size)
        assert change.size == pytest.approx(size, abs=0.35)
        assert change.test == "mean" and change.stage == 1 and change.exceedance > 1


def test_segment_finds_nothing_in_stationary_data():
    x = ar1(np.random.default_rng(9), 1, 2000, 0.5)[0]
    assert segment(x, alpha=0.01, cells=3) == []


def test_a_variance_change_needs_the_distribution_test():
    rng = np.random.default_rng(3)
    x = np.r_[rng.normal(0, 1, 500), rng.normal(0, 3, 500)]
    assert all(abs(c.index - 500) > 100 for c in segment(x, alpha=0.01, cells=0))
    changes = segment(x, alpha=0.01, cells=3)
    assert len(changes) == 1 and changes[0].test == "distribution"
    assert abs(changes[0].index - 500) <= 60 and changes[0].std_ratio > 2


def test_a_change_of_the_joint_distribution_of_x_t_and_x_t_plus_2():
    """Same marginal N(0, 1) throughout; from 400 on x_t depends on x_{t-2}."""
    rng = np.random.default_rng(4)
    e = rng.normal(size=800)
    x = e.copy()
    for t in range(402, 800):
        x[t] = 0.9 * x[t - 2] + math.sqrt(1 - 0.81) * e[t]
    result = distribution_test(x, alpha=0.01, cells=3)
    assert result.exceedance > 1 and abs(result.index - 400) <= 20
    assert distribution_test(e, alpha=0.01, cells=3).exceedance < 1


def test_indicator_sequences_partition_the_pairs():
    x = np.random.default_rng(5).normal(size=50)
    v = indicator_sequences(x, cells=3)
    assert v.shape == (9, 48)
    np.testing.assert_array_equal(v.sum(axis=0), np.ones(48))  # each pair in one cell pair
    np.testing.assert_array_equal(v.sum(axis=1).reshape(3, 3).sum(axis=1) >= 15, [True] * 3)


def test_one_sided_alternative_sees_only_its_direction():
    up = mean_shifts(np.random.default_rng(6), [2.0])
    assert [c.direction for c in segment(up, alternative="greater")] == [1]
    assert segment(up, alternative="less") == []
    assert [c.direction for c in segment(-up, alternative="less")] == [-1]
    det = ChangePoint(alternative="greater")
    assert det.alarms(stream(-up)).is_empty() and len(det.alarms(stream(up))) == 1


def test_bonferroni_split_between_the_two_tests():
    assert stage1_levels(0.01, 0, "two-sided") == (0.01, 0.0)
    assert stage1_levels(0.01, 4, "two-sided") == (0.005, 0.01 / 32)
    assert stage1_levels(0.01, 4, "greater") == (0.01, 0.0)


# -- the streaming detector ------------------------------------------------------------


def stream(values: np.ndarray, src: str = "a", t0: int = 0) -> Batch:
    return series(values, src=src, t0=t0)


def hours(alarms: pl.DataFrame, column: str = "time") -> list[int]:
    return (alarms[column] // HOUR).to_list()


def test_warm_up_scores_zero_until_two_segments_fit():
    det = ChangePoint(min_count=6, window=40)
    scores = det.score(stream(np.r_[np.zeros(11), np.full(15, 50.0)]))
    assert (scores[:11] == 0).all()  # fewer than 2·min_count points: no split to test
    assert (scores[11:16] < 1).all()  # the new level holds fewer than min_count points
    assert scores[16] == math.inf  # two constant segments of 11 and 6 points: a change
    assert (scores[17:] == 0).all()  # confirmed: the window restarted on a constant regime


def test_streaming_detector_agrees_with_the_offline_segmenter():
    x = mean_shifts(np.random.default_rng(7), [2.0, -2.0], length=200)
    offline = [c.index for c in segment(x, alpha=0.01, cells=0)]
    det = ChangePoint(alpha=0.01, cells=0)
    det.learn(stream(x), np.ones(len(x), dtype=bool))
    online = hours(det.changes_)
    assert len(offline) == len(online) == 2
    for a, b in zip(offline, online, strict=True):
        assert abs(a - b) <= 10
    assert det.changes_["direction"].to_list() == [1, -1]
    assert (det.changes_["detected_at"] > det.changes_["time"]).all()


def test_the_score_is_the_statistic_of_the_window_ending_at_each_row():
    """Ring buffer, sorted window and batching give exactly the direct computation."""
    rng = np.random.default_rng(8)
    x = rng.standard_t(4, 260)
    det = ChangePoint(alpha=1e-9, window=60, min_count=6)  # nothing is ever confirmed
    first, second = stream(x[:200]), stream(x[200:], t0=200 * HOUR)
    det.learn(first, all_rows(first))
    alpha_mean, alpha_dist = stage1_levels(1e-9, 3, "two-sided")
    expected = []
    for end in range(201, 261):
        window = x[end - 60 : end]
        mean = window_exceedance(window, alpha_mean, True, min_count=6)
        c = critical_value(alpha_dist)
        dist = distribution_split_test(window, np.sort(window), 3, 6, 1.0, True, c)[0]
        expected.append(max(mean, dist))
    np.testing.assert_allclose(det.score(second), expected, rtol=1e-12)


def test_batching_does_not_change_the_alarms():
    x = mean_shifts(np.random.default_rng(10), [3.0, -1.5, 2.0], length=120)
    whole = ChangePoint(window=96)
    whole.learn(stream(x), np.ones(len(x), dtype=bool))
    pieces = ChangePoint(window=96)
    found = []
    for lo in range(0, len(x), 37):
        part = stream(x[lo : lo + 37], t0=lo * HOUR)
        pieces.learn(part, all_rows(part))
        found += hours(pieces.changes_)
    assert found == hours(whole.changes_) and len(found) >= 3


def test_alarms_are_what_learning_confirms_and_scoring_stays_pure():
    x = mean_shifts(np.random.default_rng(11), [4.0], length=100)
    b = Batch.concat([stream(x, "a"), stream(-x, "b")])
    det = ChangePoint()
    predicted = det.alarms(b)
    scores = det.score(b)
    assert len(det) == 0  # neither call learned anything
    det.learn(b, all_rows(b))
    assert predicted.equals(det.changes_)
    assert sorted(predicted["direction"].to_list()) == [-1, 1]
    assert set(predicted.columns) >= {"key", "time", "size", "direction", "stage", "alpha"}
    assert (predicted["stage"] == 1).all() and (predicted["alpha"] == det.alpha).all()
    assert scores.max() > 1


def test_new_regime_start_and_its_moments():
    x = mean_shifts(np.random.default_rng(12), [5.0], length=100)
    b = stream(x)
    det = ChangePoint(cells=0)
    det.learn(b, all_rows(b))
    key = int(b.frame["key"][0])
    change = det.changes_.row(0, named=True)
    assert det.new_regime_start(key) == change["time"]
    regime = det.regime([key, 12345]).row(0, named=True)
    since = x[change["time"] // HOUR :]
    assert regime["n"] == len(since)
    assert regime["mean"] == pytest.approx(since.mean())
    assert regime["m2"] == pytest.approx(((since - since.mean()) ** 2).sum())
    assert det.new_regime_start(12345) is None
    assert det.regime([12345])["start"][0] is None


def test_zscore_restarts_its_baseline_from_the_new_regime():
    """The wiring: a confirmed change replaces the z-score baseline by the new regime."""
    rng = np.random.default_rng(13)
    calm = Batch.concat([stream(rng.normal(0, 1, 100), src) for src in ("a", "b", "c")])
    shifted = stream(mean_shifts(rng, [6.0], length=100), "b")
    cp, z = ChangePoint(cells=0), ZScore(min_count=8)
    z.learn(calm, all_rows(calm))
    cp.learn(shifted, all_rows(shifted))
    regime = cp.regime(cp.changes_["key"].unique().to_numpy())
    replaced = z.rebaseline(
        regime["key"].to_numpy(),
        regime["n"].to_numpy(),
        regime["mean"].to_numpy(),
        regime["m2"].to_numpy(),
    )
    assert replaced == regime.height == 1
    assert (
        z.rebaseline(
            np.array([12345], dtype=np.uint64), np.array([9]), np.array([0.0]), np.array([1.0])
        )
        == 0
    )  # an entity the z-score never saw
    probe = Batch.concat([stream([6.0], "b", 300 * HOUR), stream([6.0], "a", 300 * HOUR)])
    z_b, z_a = z.score(probe)
    assert z_b < 3 < z_a  # b's new level is its normal now; a is untouched


def test_merge_of_disjoint_shards_equals_one_pass_and_shared_keys_are_refused():
    rng = np.random.default_rng(14)
    a = stream(mean_shifts(rng, [3.0], length=80), "a")
    b = stream(mean_shifts(rng, [-3.0], length=80), "b")
    whole, left, right = ChangePoint(), ChangePoint(), ChangePoint()
    union = Batch.concat([a, b])
    whole.learn(union, all_rows(union))
    left.learn(a, all_rows(a))
    right.learn(b, all_rows(b))
    merged = left.merge(right)
    probe = Batch.concat([stream(rng.normal(3, 1, 30), "a", 500 * HOUR), stream([1.0], "b")])
    np.testing.assert_array_equal(merged.score(probe), whole.score(probe))
    with pytest.raises(NotMergeableError, match="shard"):
        left.merge(left)


def test_state_round_trip_keeps_regimes_and_the_stage2_baseline():
    x = mean_shifts(np.random.default_rng(15), [3.0, -3.0], length=90)
    det = ChangePoint(window=64, stage2_window=30)
    b = stream(x)
    det.learn(b, all_rows(b))
    clone = ChangePoint(window=64, stage2_window=30)
    clone.load_state(det.state_dict())
    probe = stream(np.random.default_rng(16).normal(0, 1, 40), t0=400 * HOUR)
    np.testing.assert_array_equal(clone.score(probe), det.score(probe))
    assert clone.stage2_ == det.stage2_ and clone.stage2_.n == len(x) // 30
    assert clone.regime(b.frame["key"][:1]).equals(det.regime(b.frame["key"][:1]))


@pytest.mark.parametrize(
    "params, message",
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"delta": 1.2}, "delta"),
        ({"min_count": 1}, "min_count"),
        ({"window": 10, "min_count": 8}, "window"),
        ({"cells": 1}, "cells"),
        ({"cells": 9}, "cells"),
        ({"sigma": "robust"}, "sigma"),
        ({"alternative": "up"}, "alternative"),
        ({"adapt_after": 0}, "adapt_after"),
        ({"bound": "markov"}, "bound"),
        ({"bound": "vp", "stage2_alpha": 0.2}, "Vysochanskij"),
        ({"stage2_window": 0}, "stage2_window"),
        ({"stage2_min_blocks": 1}, "stage2_min_blocks"),
    ],
)
def test_parameters_are_validated(params, message):
    with pytest.raises(ValueError, match=message):
        ChangePoint(**params)


def test_alpha_can_change_without_refitting():
    x = mean_shifts(np.random.default_rng(17), [0.8], length=150)
    det = ChangePoint(alpha=0.01, cells=0)
    b = stream(x[:200])
    det.learn(b, all_rows(b))
    strict = ChangePoint(alpha=1e-6, cells=0)
    strict.load_state(det.state_dict())  # same fingerprint: alpha is not state
    probe = stream(x[200:], t0=200 * HOUR)
    assert (strict.score(probe) <= det.score(probe)).all()


# -- NAB data and NAB's scoring rules ----------------------------------------------------


def load_nab_script():
    path = Path(__file__).parents[1] / "scripts" / "nab_score.py"
    spec = importlib.util.spec_from_file_location("nab_score", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_score"] = module
    spec.loader.exec_module(module)
    return module


nab_score = load_nab_script()


def read_nab(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = NAB / name
    text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()
    rows = [line.split(",") for line in text.strip().splitlines()[1:]]
    ts = np.array([r[0].replace(" ", "T") for r in rows], dtype="datetime64[ns]")
    return ts, np.array([float(r[1]) for r in rows])


def nab_windows(name: str) -> list[list[str]]:
    return json.loads((NAB / "combined_windows.json").read_text())[name]


def test_nab_scaled_sigmoid():
    s = nab_score.scaled_sigmoid
    assert s(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert s(-0.5) == pytest.approx(0.84828, abs=1e-5)
    assert s(0.0) == 0.0
    assert s(1.0) == pytest.approx(-0.98661, abs=1e-5)
    assert s(3.0) == -1.0


def test_nab_score_of_a_hand_computed_case():
    """20 rows, probation 3 rows, one window on rows 8..11 (width 4), standard profile.

    Detections: row 1 (probation: ignored), row 5 (before any window: -fp), rows 9 and 10
    (in the window: only the earlier counts, at position -(11 - 9 + 1)/4 = -0.75) and
    row 14 (after the window: position (14 - 11)/(4 - 1) = 1).
    """
    profile = nab_score.Profile(tp=1.0, fp=0.11, fn=1.0)
    scores = np.zeros(20)
    scores[[1, 5, 9, 10, 14]] = 1.0
    f = nab_score.ScoredFile.build(scores, [(8, 11)], profile)
    sig = lambda y: 2 / (1 + math.exp(5 * y)) - 1  # noqa: E731
    expected = -0.11 + sig(-0.75) / sig(-1.0) + 0.11 * sig(1.0)
    assert nab_score.raw_score([f], 0.5, profile) == pytest.approx(expected, abs=1e-12)
    threshold, raw = nab_score.optimize([f], profile)
    assert (threshold, raw) == (1.0, pytest.approx(expected, abs=1e-12))
    assert nab_score.normalized(raw, 1, profile) == pytest.approx(100 * (expected + 1) / 2)
    assert nab_score.raw_score([f], 2.0, profile) == -1.0  # nothing detected: the null score
    assert nab_score.normalized(-1.0, 1, profile) == 0.0
    perfect = nab_score.ScoredFile.build(np.eye(20)[8], [(8, 11)], profile)
    assert nab_score.normalized(nab_score.raw_score([perfect], 1.0, profile), 1, profile) == 100


def test_nab_threshold_sweep_equals_scoring_every_threshold():
    ts, x = read_nab("speed_7578.csv")
    windows = nab_score.window_rows(ts, nab_windows("realTraffic/speed_7578.csv"))
    assert len(windows) == 4 and windows[0][0] < windows[0][1]
    profile = nab_score.Profile.load(Path(__file__).parent / "data" / "nab" / "profiles.json")
    det = ChangePoint(window=96)
    scores = det.score(Batch.from_columns(ts.astype(np.int64), ["speed"] * len(x), x, {}))
    f = nab_score.ScoredFile.build(np.round(scores, 2), windows, profile)
    threshold, raw = nab_score.optimize([f], profile)
    candidates = [math.inf, *np.unique(f.scores)]
    exhaustive = max(nab_score.raw_score([f], c, profile) for c in candidates)
    assert raw == pytest.approx(exhaustive, abs=1e-9)
    assert nab_score.raw_score([f], threshold, profile) == pytest.approx(raw, abs=1e-9)


def test_the_jump_of_nab_art_daily_jumpsup_is_an_upward_change_in_its_window():
    ts, x = read_nab("art_daily_jumpsup.csv.gz")
    ((lo, hi),) = nab_score.window_rows(
        ts, nab_windows("artificialWithAnomaly/art_daily_jumpsup.csv")
    )
    det = ChangePoint()
    b = Batch.from_columns(ts.astype(np.int64), ["m"] * len(x), x, {})
    det.learn(b, all_rows(b))
    rows = np.searchsorted(ts.astype(np.int64), det.changes_["time"].to_numpy())
    inside = det.changes_.filter(pl.Series((rows >= lo) & (rows <= hi)))
    assert (inside["direction"] == 1).any()
    assert inside["size"].max() == pytest.approx(det.changes_["size"].max())
