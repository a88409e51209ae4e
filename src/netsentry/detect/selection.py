"""Label-free model choice: Excess-Mass and Mass-Volume curves (Goix, 2016).

N. Goix, "How to evaluate the quality of unsupervised anomaly detection algorithms?",
ICML Anomaly Detection Workshop, 2016 (arXiv:1607.01152). A scoring function ``s``
(higher = more *normal*, like a density; our detectors' anomaly scores are negated)
is judged by how well its level sets ``{s >= u}`` capture mass in little volume:

``MV_s(alpha) = inf_u Leb(s >= u)  subject to  P(s(X) >= u) >= alpha``
    the volume needed to hold a mass ``alpha``: lower is better;
``EM_s(t) = sup_u P(s(X) >= u) - t * Leb(s >= u)``
    the mass in excess of a uniform level ``t``: higher is better.

Both are best for the true density, for every ``alpha`` and ``t``. Masses are empirical
on the test sample; volumes are Monte Carlo over its bounding box (``n_generated``
uniform points, box volume times the share of points above ``u``). As in the paper's
experiments (and its code, ngoix/EMMV_benchmarks): ``alpha`` in [0.9, 0.999) by 1e-4,
the scalar MV criterion is the area under ``MV`` there; ``t`` runs by ``0.01 / vol`` up
to ``100 / vol``, and the EM criterion is the area under ``EM`` from 0 to
``EM^-1(0.9)``, where EM first drops to 0.9. With more than 8 features, models are fitted
and judged on ``max_features = 5`` features drawn at random, ``n_draws = 50`` times,
and the criteria averaged (the paper's answer to volumes that cannot be estimated in
high dimension).

>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2000, 2))
>>> density = lambda z: np.exp(-0.5 * (z**2).sum(axis=1))  # the truth, up to a constant
>>> flat = lambda z: -np.abs(z[:, 0])  # ignores the second feature
>>> found = compare_scorers({"density": density, "flat": flat}, x, seed=1, n_generated=20_000)
>>> rank(found)
['density', 'flat']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

Floats = npt.NDArray[np.float64]
Scorer = Callable[[Floats], Floats]

ALPHA_MIN, ALPHA_MAX, ALPHA_STEP = 0.9, 0.999, 0.0001
EM_LEVEL = 0.9
T_STEPS, T_STEP = 10_000, 0.01  # t = k * T_STEP / volume, k < T_STEPS
N_GENERATED = 100_000
MAX_FEATURES, N_DRAWS, DIM_LIMIT = 5, 50, 8


class FitsScorer(Protocol):
    """A model family: fit on a training matrix, return its anomaly-score function."""

    def fit_scorer(self, x: Floats, random_state: int = 0) -> Scorer: ...


@dataclass(frozen=True)
class Curves:
    """EM over ``t`` and MV over ``alpha`` for one scoring function on one box."""

    t: Floats
    em: Floats
    alpha: Floats
    mv: Floats
    em_auc: float  # area under EM on [0, EM^-1(0.9)]: higher is better
    mv_auc: float  # area under MV on [0.9, 0.999): lower is better
    volume: float
    em_reached: bool  # whether EM fell to 0.9 on the t grid (else the whole grid counts)


@dataclass(frozen=True)
class Criteria:
    """EM and MV criteria of one model, averaged over feature draws."""

    em: float
    mv: float
    curves: list[Curves] = field(repr=False)
    features: list[npt.NDArray[np.int64]] = field(repr=False)


def _upper_hull(v: Floats, m: Floats) -> tuple[Floats, Floats]:
    """Vertices of the upper concave hull of points (v, m), by increasing v."""
    order = np.lexsort((-m, v))
    v, m = v[order], m[order]
    first = np.r_[True, v[1:] != v[:-1]]
    v, m = v[first], m[first]
    hull: list[int] = []
    for i in range(len(v)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (v[b] - v[a]) * (m[i] - m[a]) - (m[b] - m[a]) * (v[i] - v[a]) >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    return v[hull], m[hull]


def excess_mass(s_x: Floats, s_unif: Floats, volume: float, t: Floats) -> Floats:
    """``EM(t) = max(0, max_u P_n(s > u) - t Leb(s > u))`` over the observed ``u``; EM(0) = 1.

    The maximum over ``u`` of lines in ``t`` is read off the upper hull of the points
    (Leb, mass), so the cost is O(n log n + len(t) log n), not O(n len(t)).
    """
    sorted_x, sorted_u = np.sort(s_x), np.sort(s_unif)
    levels = np.unique(s_x)
    mass = 1.0 - np.searchsorted(sorted_x, levels, side="right") / len(s_x)
    leb = volume * (1.0 - np.searchsorted(sorted_u, levels, side="right") / len(s_unif))
    v, m = _upper_hull(leb, mass)
    slopes = np.diff(m) / np.diff(v)  # decreasing along a concave hull
    best = np.searchsorted(-slopes, -t, side="left")  # vertices gained while slope > t
    em = np.maximum(m[best] - t * v[best], 0.0)
    return np.where(t == 0, 1.0, em)


def mass_volume(s_x: Floats, s_unif: Floats, volume: float, alpha: Floats) -> Floats:
    """``MV(alpha) = Leb(s >= u_alpha)``, ``u_alpha`` the highest level holding mass alpha."""
    n = len(s_x)
    descending = np.sort(s_x)[::-1]
    count = np.ceil(alpha * n).astype(np.int64)
    count = np.where((count - 1) / n >= alpha, count - 1, count)
    count = np.clip(np.where(count / n < alpha, count + 1, count), 1, n)
    level = descending[count - 1]
    above = len(s_unif) - np.searchsorted(np.sort(s_unif), level, side="left")
    return np.asarray(volume * above / len(s_unif), dtype=np.float64)


def curves(s_x: Floats, s_unif: Floats, volume: float) -> Curves:
    """EM and MV curves and criteria on the paper's grids (``s``: higher = more normal)."""
    t = np.arange(T_STEPS, dtype=np.float64) * (T_STEP / volume)
    alpha = np.arange(ALPHA_MIN, ALPHA_MAX, ALPHA_STEP)
    em = excess_mass(s_x, s_unif, volume, t)
    mv = mass_volume(s_x, s_unif, volume, alpha)
    below = np.flatnonzero(em <= EM_LEVEL)
    end = int(below[0]) + 1 if len(below) else len(t)
    return Curves(
        t=t,
        em=em,
        alpha=alpha,
        mv=mv,
        em_auc=float(np.trapezoid(em[:end], t[:end])),
        mv_auc=float(np.trapezoid(mv, alpha)),
        volume=volume,
        em_reached=bool(len(below)),
    )


def _box(x: Floats, rng: np.random.Generator, n_generated: int) -> tuple[Floats, float]:
    low, high = x.min(axis=0), x.max(axis=0)
    return rng.uniform(low, high, size=(n_generated, x.shape[1])), float(np.prod(high - low))


def compare_scorers(
    scorers: Mapping[str, Scorer], x: Floats, *, seed: int = 0, n_generated: int = N_GENERATED
) -> dict[str, Criteria]:
    """EM/MV of fixed scoring functions (higher = more normal) on the box of ``x``."""
    uniform, volume = _box(x, np.random.default_rng(seed), n_generated)
    every = np.arange(x.shape[1])
    out = {}
    for name, s in scorers.items():
        found = curves(np.asarray(s(x), np.float64), np.asarray(s(uniform), np.float64), volume)
        out[name] = Criteria(found.em_auc, found.mv_auc, [found], [every])
    return out


def compare(
    models: Mapping[str, FitsScorer],
    x_train: Floats,
    x_test: Floats,
    *,
    seed: int = 0,
    n_generated: int = N_GENERATED,
    max_features: int = MAX_FEATURES,
    n_draws: int = N_DRAWS,
    dim_limit: int = DIM_LIMIT,
) -> dict[str, Criteria]:
    """Fit each model on ``x_train`` and judge it on ``x_test`` (anomaly scores negated).

    Features constant on ``x_test`` are left out (their box has no volume). Above
    ``dim_limit`` features, each of ``n_draws`` draws fits every model on the same
    ``max_features`` random features; the criteria are the means over the draws.
    """
    rng = np.random.default_rng(seed)
    usable = np.flatnonzero(np.ptp(x_test, axis=0) > 0) if len(x_test) else np.zeros(0, int)
    if len(usable) == 0 or len(x_train) < 2:
        raise ValueError("EM/MV need a training sample and a test box of positive volume")
    draws = (
        [usable]
        if len(usable) <= dim_limit
        else [np.sort(rng.permutation(usable)[:max_features]) for _ in range(n_draws)]
    )
    found: dict[str, list[Curves]] = {name: [] for name in models}
    for draw, features in enumerate(draws):
        test = x_test[:, features]
        uniform, volume = _box(test, rng, n_generated)
        for name, model in models.items():
            score = model.fit_scorer(x_train[:, features], random_state=seed + draw)
            found[name].append(curves(-score(test), -score(uniform), volume))
    return {
        name: Criteria(
            em=float(np.mean([c.em_auc for c in got])),
            mv=float(np.mean([c.mv_auc for c in got])),
            curves=got,
            features=draws,
        )
        for name, got in found.items()
    }


def rank(criteria: Mapping[str, Criteria]) -> list[str]:
    """Best first: by the mean of the EM rank (high first) and the MV rank (low first).

    Ties go to the higher EM. When the two criteria agree this is their common order.
    """
    names = list(criteria)
    em_rank = np.argsort(np.argsort([-criteria[n].em for n in names], kind="stable"))
    mv_rank = np.argsort(np.argsort([criteria[n].mv for n in names], kind="stable"))
    order = sorted(range(len(names)), key=lambda i: (em_rank[i] + mv_rank[i], em_rank[i], names[i]))
    return [names[i] for i in order]


def best_per_segment(per_segment: Mapping[str, Mapping[str, Criteria]]) -> dict[str, str]:
    """The first of :func:`rank` in every segment."""
    return {segment: rank(found)[0] for segment, found in per_segment.items() if found}
