"""Feedback-tuned device thresholds: direction, bounds, cost, determinism (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsentry.devices.tuning import (
    BOUNDS,
    DEFAULT_BOUNDS,
    DEFAULT_THRESHOLD,
    DEFAULT_THRESHOLDS,
    CostWeights,
    History,
    Problem,
    bounds_of,
    effective,
    flags,
    polish,
    tune,
)
from netsentry.devices.windows import FEATURES

NAMES = (*DEFAULT_THRESHOLDS, "jitter")  # "jitter": a name without a default of its own
TRIALS = 16
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

score_maps = st.dictionaries(
    st.sampled_from(NAMES), st.floats(0.0, 12.0, allow_nan=False), min_size=1, max_size=3
)
labels = st.sampled_from(["false_positive", "confirmed", "missed", None])
old_rows = st.lists(st.tuples(score_maps, labels, st.just(False)), max_size=25)


@st.composite
def currents(draw: st.DrawFn) -> dict[str, float]:
    return {name: draw(st.floats(*bounds_of(name), allow_nan=False)) for name in DEFAULT_THRESHOLDS}


def new_rows(label: str) -> st.SearchStrategy[list[tuple[dict[str, float], str, bool]]]:
    return st.lists(st.tuples(score_maps, st.just(label), st.just(True)), min_size=1, max_size=15)


def within_bounds(thresholds: dict[str, float]) -> bool:
    return all(bounds_of(n)[0] <= t <= bounds_of(n)[1] for n, t in thresholds.items())


def test_defaults_cover_the_features_and_sit_inside_their_bounds():
    assert set(DEFAULT_THRESHOLDS) == {*FEATURES, "forest"}
    assert {"iat_mean", "iat_std", "size_mean", "size_std", "rate", "peak_rate"} <= set(FEATURES)
    assert set(BOUNDS) == set(DEFAULT_THRESHOLDS)
    assert within_bounds(DEFAULT_THRESHOLDS)
    assert bounds_of("jitter") == DEFAULT_BOUNDS
    assert DEFAULT_BOUNDS[0] <= DEFAULT_THRESHOLD <= DEFAULT_BOUNDS[1]


def test_verdict_is_strictly_above_and_unknown_names_use_the_global_default():
    assert effective({"rate": 5.0})["rate"] == 5.0
    assert effective(None) == DEFAULT_THRESHOLDS
    assert not flags({"rate": 5.0}, {"rate": 5.0})
    assert flags({"rate": 5.0001}, {"rate": 5.0})
    assert flags({"jitter": DEFAULT_THRESHOLD + 0.1}, {})
    assert not flags({"jitter": DEFAULT_THRESHOLD}, {})


def test_history_skips_unlabelled_and_names_a_bad_row():
    history = History.from_rows(
        [({"rate": 1.0}, None, True), ({"rate": math.nan, "forest": 0.9}, "missed", True)]
    )
    assert len(history) == 1 and history.names == ("forest", "rate")
    assert history.scores.tolist() == [[0.9, -math.inf]]
    with pytest.raises(ValueError, match="window 1: label"):
        History.from_rows([({"rate": 1.0}, "missed", True), ({"rate": 1.0}, "maybe", True)])
    with pytest.raises(ValueError, match="window 0: score 'rate'"):
        History.from_rows([({"rate": "high"}, "missed", True)])
    with pytest.raises(ValueError, match="cost weight missed"):
        CostWeights(missed=0.0)
    with pytest.raises(ValueError, match="threshold 'rate'"):
        tune(history, {"rate": math.inf})


def test_frequent_false_positives_make_the_detector_less_sensitive():
    rng = np.random.default_rng(3)
    rows = [({"size_std": float(s)}, "false_positive", True) for s in rng.uniform(4.2, 6.0, 40)]
    rows += [({"size_std": 7.5, "rate": 6.0}, "confirmed", True)]
    result = tune(History.from_rows(rows), {"size_std": 4.0}, trials=TRIALS)
    assert result.directions["size_std"] == "raise"
    assert result.thresholds["size_std"] >= max(s["size_std"] for s, _, _ in rows[:-1])
    assert result.thresholds["size_std"] < 7.5  # the confirmed anomaly still fires
    assert result.cost_after.false_positives == 0 and result.cost_after.missed == 0
    untouched = set(DEFAULT_THRESHOLDS) - {"size_std"}
    assert all(result.thresholds[n] == DEFAULT_THRESHOLDS[n] for n in untouched)


def test_missed_anomalies_make_the_detector_more_sensitive():
    rows = [({"iat_mean": 3.1, "rate": 1.0}, "missed", True)] * 3
    rows += [({"iat_mean": 2.5}, "false_positive", False)]  # old feedback: a floor
    result = tune(History.from_rows(rows), {}, trials=TRIALS)
    assert result.directions["iat_mean"] == "lower"
    assert 2.5 <= result.thresholds["iat_mean"] < 3.1
    assert result.cost_after.missed == 0 and result.cost_after.false_positives == 0


def test_the_anchor_keeps_one_report_from_swinging_a_threshold():
    # moving 5.5 of the range of 18 costs 4 * 5.5 / 18 = 1.2 false positives
    one = tune(History.from_rows([({"rate": 9.5}, "false_positive", True)]), {"rate": 4.0})
    assert one.thresholds["rate"] == 4.0
    five = tune(History.from_rows([({"rate": 9.5}, "false_positive", True)] * 5), {"rate": 4.0})
    assert five.thresholds["rate"] == 9.5


def test_no_new_feedback_moves_nothing():
    rows = [({"rate": 6.0}, "false_positive", False), ({"iat_std": 3.0}, "missed", False)]
    result = tune(History.from_rows(rows), {})
    assert not result.changed and result.trials == 0
    assert set(result.directions.values()) == {"hold"}


def test_why_the_guarantee_is_per_round():
    """Over a whole history, one more false positive can rightly lower another threshold.

    A confirmed window (5, 5) was caught by feature a; a new false positive (6, 0)
    pushes a above 6, so only lowering b below 5 keeps the confirmed anomaly caught.
    """
    base = [({"a": 5.0, "b": 5.0}, "confirmed", False), ({"a": 0.0, "b": 8.0}, "missed", True)]
    current = {"a": 3.0, "b": 10.0}
    before = tune(History.from_rows(base), current, trials=64)
    fp = [({"a": 6.0, "b": 0.0}, "false_positive", True)] * 5
    after = tune(History.from_rows(base + fp), current, trials=64)
    assert after.thresholds["a"] >= 6.0 > before.thresholds["a"]
    assert after.thresholds["b"] < 5.0 < before.thresholds["b"]
    assert after.cost_after.missed == 0 and after.cost_after.false_positives == 0


def test_the_search_finds_a_trade_that_one_threshold_at_a_time_cannot():
    """Raising a alone loses the confirmed windows; lowering b alone clears nothing."""
    rows = [({"a": 5.0, "b": 0.0}, "false_positive", True)] * 10
    rows += [({"a": 4.5, "b": 3.5}, "confirmed", True)] * 6
    rows += [({"a": 0.0, "b": 3.8}, "missed", True)]
    history, current = History.from_rows(rows), {"a": 4.0, "b": 4.0}
    problem = Problem(history, current, CostWeights())
    directions, low, high = problem.box()
    active = [problem.names.index("a"), problem.names.index("b")]
    assert [directions[i] for i in active] == ["raise", "lower"]
    stalled = polish(problem, problem.theta0, active, low, high)
    assert problem.cost(stalled).false_positives == 10
    for seed in range(3):
        result = tune(history, current, trials=TRIALS, seed=seed)
        assert result.thresholds["a"] == 5.0 and result.thresholds["b"] < 3.5
        moved = abs(result.thresholds["a"] - 4.0) + abs(result.thresholds["b"] - 4.0)
        span = bounds_of("a")[1] - bounds_of("a")[0]
        assert result.cost_after.total == pytest.approx(CostWeights().anchor * moved / span)


@FAST
@given(history=old_rows, extra=new_rows("false_positive"), current=currents())
def test_a_round_of_false_positives_never_lowers_a_threshold(history, extra, current):
    result = tune(History.from_rows(history + extra), current, trials=TRIALS)
    assert all(result.thresholds[n] >= t for n, t in result.previous.items())
    assert set(result.directions.values()) <= {"raise", "hold"}


@FAST
@given(history=old_rows, extra=new_rows("missed"), current=currents())
def test_a_round_of_missed_reports_never_raises_a_threshold(history, extra, current):
    result = tune(History.from_rows(history + extra), current, trials=TRIALS)
    assert all(result.thresholds[n] <= t for n, t in result.previous.items())
    assert set(result.directions.values()) <= {"lower", "hold"}


@FAST
@given(
    first=st.lists(st.tuples(score_maps, labels, st.just(True)), max_size=25),
    fps=new_rows("false_positive"),
    missed=new_rows("missed"),
)
def test_label_tune_label_tune(first, fps, missed):
    """The online loop: each round's feedback moves thresholds only its own way."""
    tuned = tune(History.from_rows(first), {}, trials=TRIALS)
    old = [(s, label, False) for s, label, _ in first]
    up = tune(History.from_rows(old + fps), tuned.thresholds, trials=TRIALS)
    assert all(up.thresholds[n] >= t for n, t in tuned.thresholds.items())
    old += [(s, label, False) for s, label, _ in fps]
    down = tune(History.from_rows(old + missed), up.thresholds, trials=TRIALS)
    assert all(down.thresholds[n] <= t for n, t in up.thresholds.items())


@FAST
@given(
    rows=st.lists(st.tuples(score_maps, labels, st.booleans()), max_size=40),
    current=currents(),
    weights=st.builds(CostWeights, st.floats(0.1, 5.0), st.floats(0.1, 5.0), st.floats(0.0, 10.0)),
)
def test_within_bounds_never_costlier_and_seeded(rows, current, weights):
    history = History.from_rows(rows)
    result = tune(history, current, weights=weights, trials=TRIALS, seed=7)
    assert within_bounds(result.thresholds)
    assert result.cost_after.total <= result.cost_before.total
    assert result.cost_after.errors <= result.cost_before.errors
    again = tune(history, current, weights=weights, trials=TRIALS, seed=7)
    assert again == result


def test_cost_counts_what_the_detector_would_flag():
    rows = [
        ({"rate": 5.0}, "false_positive", True),
        ({"rate": 3.0}, "missed", True),
        ({"rate": 6.0}, "confirmed", True),
        ({"rate": 9.0}, None, True),
    ]
    result = tune(History.from_rows(rows), {"rate": 4.0}, trials=TRIALS)
    assert (result.cost_before.false_positives, result.cost_before.missed) == (1, 1)
    assert result.cost_before.errors == 1.0 * 1 + 2.0 * 1 and result.cost_before.anchor == 0
    # raising to 5 clears the false positive, lowering below 3 catches the missed: not both
    assert result.directions["rate"] == "free"
    assert result.cost_after.total < result.cost_before.total
