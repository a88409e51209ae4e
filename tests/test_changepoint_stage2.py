"""Stage 2 of the disorder criterion: the bounds against their formulas, and the detector."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import HOUR, all_rows, series
from netsentry.detect.changepoint import ChangePoint, TriggerBaseline, multiplier, tail_bound
from netsentry.detect.changepoint.stage2 import VP_MIN_LAMBDA
from netsentry.model import Batch


def test_vysochanskij_petunin_at_three_sigma():
    assert tail_bound(3.0, "vp") == pytest.approx(4 / 81)
    assert round(tail_bound(3.0, "vp"), 4) == 0.0494
    assert multiplier(4 / 81, "vp") == pytest.approx(3.0)


@pytest.mark.parametrize("lam", [1.7, 2.0, 3.0, 5.0])
def test_bounds_against_their_formulas(lam):
    assert tail_bound(lam, "chebyshev") == pytest.approx(1 / lam**2)
    assert tail_bound(lam, "vp") == pytest.approx(4 / (9 * lam**2))
    assert tail_bound(lam, "normal") == pytest.approx(1 - NormalDist().cdf(lam))
    assert tail_bound(lam, "vp") == pytest.approx(4 / 9 * tail_bound(lam, "chebyshev"))


def test_normal_multiplier_is_the_normal_quantile():
    assert multiplier(0.05, "normal") == pytest.approx(1.644854, abs=1e-6)
    assert multiplier(0.01, "normal") == pytest.approx(2.326348, abs=1e-6)
    assert multiplier(0.01, "chebyshev") == pytest.approx(10.0)


@settings(max_examples=100, deadline=None)
@given(alpha=st.floats(0.001, 0.16), bound=st.sampled_from(["normal", "chebyshev", "vp"]))
def test_multiplier_inverts_the_bound(alpha, bound):
    assert tail_bound(multiplier(alpha, bound), bound) == pytest.approx(alpha, rel=1e-9)


def test_vp_needs_lambda_above_root_8_3():
    assert pytest.approx(1.63299, abs=1e-5) == VP_MIN_LAMBDA
    with pytest.raises(ValueError, match="lambda"):
        tail_bound(1.6, "vp")
    with pytest.raises(ValueError, match="1/6"):
        multiplier(1 / 6, "vp")
    with pytest.raises(ValueError, match="bound"):
        multiplier(0.05, "markov")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "counts",
    [
        np.random.default_rng(0).poisson(3.0, 400_000),
        np.random.default_rng(1).binomial(20, 0.1, 400_000),
        np.random.default_rng(2).geometric(0.3, 400_000),
    ],
    ids=["poisson", "binomial", "geometric"],
)
def test_the_bounds_hold_for_unimodal_counts(counts):
    mu, sigma = counts.mean(), counts.std()
    for lam in (1.7, 2.0, 2.5, 3.0, 4.0):
        frequency = np.mean(np.abs(counts - mu) >= lam * sigma)
        assert frequency <= tail_bound(lam, "vp") <= tail_bound(lam, "chebyshev")


def test_normal_approximation_for_sums_of_many_independent_terms():
    z = np.random.default_rng(3).binomial(2000, 0.05, 400_000)  # 2000 Bernoulli terms
    mu, sigma = 2000 * 0.05, math.sqrt(2000 * 0.05 * 0.95)
    threshold = mu + multiplier(0.05, "normal") * sigma
    assert np.mean(z > threshold) == pytest.approx(0.05, abs=0.01)


@settings(max_examples=100, deadline=None)
@given(
    a=st.lists(st.integers(0, 9), max_size=30),
    b=st.lists(st.integers(0, 9), max_size=30),
)
def test_trigger_baseline_merges_to_the_moments_of_the_union(a, b):
    left, right, whole = TriggerBaseline(), TriggerBaseline(), TriggerBaseline()
    left.update(a)
    right.update(b)
    whole.update(a + b)
    left.merge_moments(right.n, right.mean, right.m2)
    assert left.n == whole.n == len(a) + len(b)
    union = np.array(a + b, dtype=float)
    if len(union):
        assert left.mean == pytest.approx(union.mean(), abs=1e-12)
        assert left.m2 == pytest.approx(((union - union.mean()) ** 2).sum(), abs=1e-9)
    if len(union) > 1:
        assert left.std == pytest.approx(union.std(ddof=1), abs=1e-12)


def test_threshold_is_mu_plus_lambda_sigma():
    base = TriggerBaseline()
    base.update([0, 1, 1, 2, 0, 1, 3, 0])
    counts = np.array([0, 1, 1, 2, 0, 1, 3, 0], dtype=float)
    for bound in ("normal", "chebyshev", "vp"):
        expected = counts.mean() + multiplier(0.05, bound) * counts.std(ddof=1)
        assert base.threshold(0.05, bound) == pytest.approx(expected)


# -- stage 2 in the detector ----------------------------------------------------------


def regimes(rng: np.random.Generator, lengths: list[int], step: float = 6.0) -> np.ndarray:
    """Consecutive regimes of the given lengths, each ``step`` above or below the last."""
    level, parts = 0.0, []
    for length in lengths:
        parts.append(rng.normal(level, 1.0, length))
        level += step * rng.choice([-1.0, 1.0])
    return np.concatenate(parts)


def normal_operation(rng: np.random.Generator, entities: int, blocks: int) -> Batch:
    """Entities whose blocks of 60 points hold 0, 1 or 2 level shifts."""
    batches = []
    for e in range(entities):
        lengths: list[int] = []
        for _ in range(blocks):
            k = int(rng.integers(0, 3))
            cuts = np.sort(rng.choice(np.arange(15, 46), size=k, replace=False))
            lengths += list(np.diff([0, *cuts, 60]))
        batches.append(series(regimes(rng, lengths)[: 60 * blocks], src=f"e{e}"))
    return Batch.concat(batches)


def test_stage2_fires_when_an_entity_changes_abnormally_often():
    rng = np.random.default_rng(4)
    det = ChangePoint(
        alpha=0.01,
        cells=0,
        min_count=5,
        window=60,
        stage2_window=60,
        bound="normal",
        stage2_min_blocks=10,
    )
    assert det.stage2_threshold() == math.inf  # no baseline yet: stage 2 cannot fire
    normal = normal_operation(rng, entities=6, blocks=5)
    det.learn(normal, all_rows(normal))
    assert det.stage2_.n == 30 and det.stage2_.mean > 0.5
    assert (det.changes_["stage"] == 1).all()
    threshold = det.stage2_threshold()
    assert math.isfinite(threshold)
    # e0 now flaps: a shift every 12 points in its next block.
    flapping = series(regimes(rng, [12] * 5), src="e0", t0=300 * HOUR)
    alarms = det.alarms(flapping)
    assert len(alarms) >= 3
    stage2 = alarms.filter(alarms["stage"] == 2)
    assert len(stage2) >= 1
    assert (stage2["triggers"] > threshold).all() and (stage2["alpha"] == det.stage2_alpha).all()
    assert (stage2["stage2_threshold"] == threshold).all()
    before = det.stage2_.n
    det.learn(flapping, all_rows(flapping))
    assert det.stage2_.n == before  # the abnormal block stays out of the baseline
