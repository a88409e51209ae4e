"""The z-score detector against batch references and its documented rules."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HOUR, all_rows, batch, series
from netsentry.detect import moments
from netsentry.detect.threshold import Tolerance
from netsentry.detect.zscore import ZScore
from netsentry.keys import entity_key

KEYS = ["a", "b", "c"]
# Telemetry values: rounded to 1e-6, so squared deviations never underflow (below ~1e-154
# they would: a limit of float64, not of the method).
small = st.floats(min_value=-10, max_value=10, allow_nan=False).map(lambda v: round(v, 6))
offsets = st.sampled_from([0.0, 1e3, 1e9, -1e9])
checks_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(KEYS), small), min_size=0, max_size=12),
    min_size=1,
    max_size=8,
)


def reference_z(learned: list[float], x: float, min_count: int) -> float:
    """The rule computed from scratch over every learned value (exact stdev)."""
    if len(learned) < min_count:
        return 0.0
    mean, sd = statistics.fmean(learned), statistics.stdev(learned)
    if sd == 0:
        return 0.0 if x == mean else math.copysign(math.inf, x - mean)
    return (x - mean) / sd


@settings(max_examples=150, deadline=None)
@given(
    checks=checks_strategy, offset=offsets, min_count=st.integers(2, 5), tolerance=st.floats(2, 6)
)
def test_z_matches_batch_reference_check_by_check(checks, offset, min_count, tolerance):
    detector = ZScore(min_count=min_count, adapt_after=10_000)
    threshold = Tolerance(tolerance)
    learned: dict[str, list[float]] = defaultdict(list)
    t = 0
    for rows in checks:
        rows = [(k, offset + v) for k, v in rows]
        b = batch(rows, t0=t)
        t += len(rows) * HOUR
        got = detector.baseline(b)["z"].to_numpy()
        expected = np.array([reference_z(learned[k], x, min_count) for k, x in rows])
        # float64 cannot place a value near 1e9 closer than one ulp (1.2e-7): a deviation,
        # the mean and the std each carry a few ulps of the magnitude, relative to the
        # spread, so z carries (c + |z|) of them. Nothing looser is allowed.
        ulp_over_sd = np.array(
            [
                8 * np.spacing(abs(x) + 1.0) / statistics.stdev(learned[k])
                if len(learned[k]) >= max(min_count, 2) and statistics.stdev(learned[k]) > 0
                else 0.0
                for k, x in rows
            ]
        )
        both_inf = np.isinf(got) & np.isinf(expected) & (np.sign(got) == np.sign(expected))
        with np.errstate(invalid="ignore"):
            close = (
                np.abs(got - expected)
                <= 1e-9 * np.abs(expected) + ulp_over_sd * (1 + np.abs(expected)) + 1e-12
            )
        assert (both_inf | close).all(), (rows, got, expected)
        flags = threshold.flags(detector.score(b))
        detector.learn(b, ~flags)
        for (k, x), flagged in zip(rows, flags, strict=True):
            if not flagged:
                learned[k].append(x)
    state = detector.state_
    for k in KEYS:
        row = state.filter(state["key"] == entity_key({"src": k}))
        assert row.height == (1 if learned[k] or any(k == r[0] for c in checks for r in c) else 0)
        if learned[k]:
            assert row["n"][0] == len(learned[k])
            assert math.isclose(
                row["mean"][0], statistics.fmean(learned[k]), rel_tol=1e-12, abs_tol=1e-9
            )
            if len(learned[k]) > 1:
                sd = moments.std(row["n"].to_numpy(), row["m2"].to_numpy())[0]
                assert math.isclose(sd, statistics.stdev(learned[k]), rel_tol=1e-7, abs_tol=1e-7)


@given(st.lists(st.floats(-0.5, 0.5), min_size=2, max_size=200), st.integers(1, 20))
def test_std_near_1e9_with_spread_1_is_exact(noise, chunks):
    values = 1e9 + np.asarray(noise)
    detector = ZScore(min_count=2)
    for i, part in enumerate(np.array_split(values, chunks)):
        if len(part):
            b = series(part, t0=i * 1000 * HOUR)
            detector.learn(b, all_rows(b))
    sd = moments.std(detector.state_["n"].to_numpy(), detector.state_["m2"].to_numpy())[0]
    # within a few ulps of 1e9 (1.2e-7 each): the resolution of the values themselves
    assert abs(sd - statistics.stdev(values.tolist())) <= 4 * np.spacing(1e9)
    # the seed's sum / sum-of-squares formula on the same data:
    s, q, n = values.sum(), (values**2).sum(), len(values)
    naive = math.sqrt(max(q - s * s / n, 0) / (n - 1))
    if statistics.stdev(values.tolist()) > 0.1:
        assert not math.isclose(naive, statistics.stdev(values.tolist()), rel_tol=1e-3)


def test_cold_start_learns_without_judging():
    detector = ZScore(min_count=5)
    warm = series([10, 11, 9, 10])
    assert (detector.score(warm) == 0).all()
    detector.learn(warm, all_rows(warm))
    huge = series([1e6], t0=10 * HOUR)
    assert detector.score(huge)[0] == 0  # 4 < min_count: still learning
    detector.learn(huge, all_rows(huge))
    assert detector.state_["n"][0] == 5
    assert detector.score(series([10], t0=20 * HOUR))[0] > 0  # judged from now on


def test_zero_variance_rule():
    detector = ZScore(min_count=3)
    flat = series([7.0] * 5)
    detector.learn(flat, all_rows(flat))
    assert detector.score(series([7.0], t0=9 * HOUR))[0] == 0
    assert detector.score(series([7.5], t0=9 * HOUR))[0] == np.inf
    assert detector.baseline(series([6.0], t0=9 * HOUR))["z"][0] == -np.inf


def test_one_sided_alternatives():
    rows = series([10, 12, 8, 10, 11, 9])
    up, down = series([30.0], t0=9 * HOUR), series([-10.0], t0=9 * HOUR)
    for alternative, flags_up, flags_down in [
        ("two-sided", True, True),
        ("greater", True, False),
        ("less", False, True),
    ]:
        detector = ZScore(min_count=3, alternative=alternative)
        detector.learn(rows, all_rows(rows))
        threshold = Tolerance(3)
        assert threshold.flags(detector.score(up))[0] == flags_up
        assert threshold.flags(detector.score(down))[0] == flags_down


def test_batch_is_scored_against_statistics_from_before_it():
    detector = ZScore(min_count=3)
    base = series([10, 11, 9, 10])
    detector.learn(base, all_rows(base))
    check = series([10, 50, 10], t0=10 * HOUR)
    before = detector.score(check)
    assert before[0] == before[2]  # the 50 in between does not move the baseline mid-check


def test_only_unflagged_values_update_the_baseline():
    detector = ZScore(min_count=3)
    base = series([10, 11, 9, 10, 10, 11])
    detector.learn(base, all_rows(base))
    before = detector.state_.clone()
    attack = series([500, 10.5], t0=10 * HOUR)
    flags = Tolerance(3).flags(detector.score(attack))
    assert flags.tolist() == [True, False]
    detector.learn(attack, ~flags)
    assert detector.state_["n"][0] == before["n"][0] + 1
    assert math.isclose(detector.state_["mean"][0], statistics.fmean([10, 11, 9, 10, 10, 11, 10.5]))


def run_checks(detector, values_per_check, t_start=0):
    """Run one check per list of values; return the flags of each check."""
    flags_seen, t = [], t_start
    for values in values_per_check:
        b = series(values, t0=t)
        t += len(values) * HOUR
        flags = Tolerance(3).flags(detector.score(b))
        detector.learn(b, ~flags)
        flags_seen.append(flags)
    return flags_seen, t


def test_lasting_level_shift_becomes_the_new_normal():
    rng = np.random.default_rng(7)
    detector = ZScore(min_count=8, adapt_after=3)
    run_checks(detector, [list(100 + rng.normal(0, 2, 4)) for _ in range(6)])
    shifted = [list(200 + rng.normal(0, 2, 4)) for _ in range(5)]
    flags, t = run_checks(detector, shifted)
    # 3 checks of 4 values: streak 3 and 12 >= min_count values -> rebaselined
    assert [bool(f.all()) for f in flags[:3]] == [True, True, True]
    assert not flags[3].any() and not flags[4].any()
    assert 190 < detector.state_["mean"][0] < 210
    # and a return to the old level is now the anomaly
    back, _ = run_checks(detector, [[100.0]], t)
    assert back[0].all()


def test_gated_rule_alone_never_follows_a_level_shift():
    rng = np.random.default_rng(7)
    detector = ZScore(min_count=8, adapt_after=10_000)
    run_checks(detector, [list(100 + rng.normal(0, 2, 4)) for _ in range(6)])
    flags, _ = run_checks(detector, [list(200 + rng.normal(0, 2, 4)) for _ in range(20)])
    assert all(f.all() for f in flags)  # stuck: the behaviour the new-normal rule fixes


def test_interrupted_deviation_never_becomes_normal():
    """An attacker must hold the new level: one normal value resets the clock."""
    rng = np.random.default_rng(3)
    detector = ZScore(min_count=8, adapt_after=3)
    run_checks(detector, [list(100 + rng.normal(0, 2, 4)) for _ in range(6)])
    # 2 deviating checks, then a check ending on a normal value, repeated
    pattern = [[300.0] * 4, [300.0] * 4, [300.0, 300.0, 300.0, 100.0]] * 4
    flags, _ = run_checks(detector, pattern)
    assert all(f[:3].all() for f in flags)
    assert detector.state_["mean"][0] < 110
    assert len(detector.rebaselined_) == 0


def test_new_normal_needs_min_count_values():
    rng = np.random.default_rng(5)
    detector = ZScore(min_count=8, adapt_after=2)
    run_checks(detector, [list(100 + rng.normal(0, 2, 4)) for _ in range(4)])
    flags, _ = run_checks(detector, [[200.0], [200.0], [200.0]])
    assert all(f.all() for f in flags)  # streak 3 >= 2 but only 3 < 8 values
    assert detector.state_["mean"][0] < 110


def test_non_finite_values_never_poison_state():
    detector = ZScore(min_count=2)
    b = series([1.0, 2.0, 3.0])
    frame = b.frame.with_columns(value=np.array([1.0, np.nan, np.inf]))
    from netsentry.model import Batch

    detector.learn(Batch(frame), all_rows(b))
    assert detector.state_["n"][0] == 1 and detector.state_["mean"][0] == 1.0


def test_invalid_parameters_are_refused():
    with pytest.raises(ValueError, match="min_count"):
        ZScore(min_count=1)
    with pytest.raises(ValueError, match="adapt_after"):
        ZScore(adapt_after=0)
    with pytest.raises(ValueError, match="alternative"):
        ZScore(alternative="both")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tolerance"):
        Tolerance(1.5)
