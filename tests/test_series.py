"""Counters, creation timestamps and gauges: what the detector sees of each."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import HOUR, batch, series
from netsentry.model import Batch
from netsentry.series import (
    CounterIncrease,
    CreatedTracker,
    GaugePassThrough,
    family,
    kind_of,
)


def test_kinds_from_openmetrics_names():
    assert kind_of("tdmp_bytes_total") == "counter"
    assert kind_of("tdmp_bytes_created") == "created"
    assert kind_of("cpu_usage_idle") == "gauge"
    assert family("tdmp_bytes_total") == family("tdmp_bytes_created") == "tdmp_bytes"


def test_counter_increase_per_entity_never_across_entities():
    counter = CounterIncrease()
    b = batch([("a", 100), ("b", 5000), ("a", 130), ("b", 5010), ("a", 190)], "x_total")
    out, progress = counter.increases(b)
    got = {(r["src"], r["time"]): r["value"] for r in out.frame.iter_rows(named=True)}
    # a: 100 @0h, 130 @2h, 190 @4h -> +30 over 2h, +60 over 2h, per hour
    assert got == {("a", 2 * HOUR): 15.0, ("a", 4 * HOUR): 30.0, ("b", 3 * HOUR): 5.0}
    assert progress.resets == 0


def test_counter_state_carries_across_checks():
    counter = CounterIncrease()
    counter.increases(series([10, 20], measurement="x_total"))
    out, _ = counter.increases(series([50], measurement="x_total", t0=3 * HOUR))
    assert out.frame["value"].to_list() == [15.0]  # (50 - 20) over 2 h


def test_counter_reset_by_decrease():
    counter = CounterIncrease()
    out, progress = counter.increases(series([100, 150, 20, 60], measurement="x_total"))
    assert out.frame["value"].to_list() == [50.0, 20.0, 40.0]
    assert progress.resets == 1
    assert counter.state_["resets"][0] == 1


def test_counter_reset_by_created_change_without_decrease():
    created, counter = CreatedTracker(), CounterIncrease()
    resets, p = created.resets(series([1e9, 1e9, 2e9, 2e9], measurement="x_created"))
    assert p.resets == 1 and resets["time"].to_list() == [2 * HOUR]
    out, p = counter.increases(series([100, 150, 300, 310], measurement="x_total"), resets)
    # at 2h the counter was recreated: it counted 300 since, not 150
    assert out.frame["value"].to_list() == [50.0, 300.0, 10.0]
    assert p.resets == 1


def test_late_and_duplicate_samples():
    counter = CounterIncrease()
    counter.increases(series([10, 20, 30], measurement="x_total"))
    late = Batch.from_columns([HOUR, 5 * HOUR], ["x_total"] * 2, [99.0, 50.0], {"src": ["a", "a"]})
    out, progress = counter.increases(late)
    assert progress.late == 1 and out.frame["value"].to_list() == pytest.approx([20.0 / 3])
    dup = Batch.from_columns(
        [6 * HOUR, 6 * HOUR], ["x_total"] * 2, [1e6, 60.0], {"src": ["a", "a"]}
    )
    out, _ = counter.increases(dup)
    assert out.frame["value"].to_list() == [10.0]  # the last of the duplicates counts


def test_gauges_pass_through_and_drop_replays():
    gauge = GaugePassThrough()
    b = series([3.0, 4.0, 5.0], measurement="temp")
    out, p = gauge.values(b)
    assert out.frame["value"].to_list() == [3.0, 4.0, 5.0] and p.late == 0
    out, p = gauge.values(b)  # the same data again: nothing new
    assert len(out) == 0 and p.late == 3


def test_state_round_trip():
    counter = CounterIncrease()
    counter.increases(series([1, 2, 3], measurement="x_total"))
    clone = CounterIncrease()
    clone.load_state(counter.state_dict())
    assert clone.state_.equals(counter.state_)


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=60), st.integers(1, 10))
def test_increases_sum_to_the_counter_growth(steps, chunks):
    """Monotonic counter sampled hourly in chunks: increases add up to last - first."""
    values = np.cumsum(steps).astype(float)
    counter = CounterIncrease()
    total, t = 0.0, 0
    for part in np.array_split(values, chunks):
        if len(part):
            out, progress = counter.increases(series(part, measurement="x_total", t0=t))
            t += len(part) * HOUR
            total += out.frame["value"].sum()
            assert progress.resets == 0
    assert total == values[-1] - values[0]


def test_counter_output_is_a_batch_of_the_same_entities():
    counter = CounterIncrease()
    out, _ = counter.increases(series([1, 5], src="dev", measurement="x_total"))
    assert out.frame.schema == Batch.empty().frame.schema
    assert out.frame["src"].to_list() == ["dev"]
    assert out.frame.filter(pl.col("value") < 0).height == 0
