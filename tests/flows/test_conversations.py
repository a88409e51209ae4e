"""Conversations: exact per-interval sums, gaps, lateness, state, and the z-score on them."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from flowdata import DATA, HOUR, SECOND, flow, make_flows

from netsentry.detect.base import StateMismatchError
from netsentry.detect.zscore import ZScore
from netsentry.flows.conversations import ConversationSeries, conversations
from netsentry.flows.schema import Flows
from netsentry.flows.zeek import read_zeek
from netsentry.keys import entity_key
from netsentry.model import Batch
from netsentry.store.sqlite import decode_state, encode_state

WEB = {"src": "10.0.0.1", "dst": "10.0.0.2", "dstp": "443", "proto": "tcp", "service": "ssl"}
DNS = {"src": "10.0.0.1", "dst": "10.0.0.53", "dstp": "53", "proto": "udp", "service": "dns"}


def hand_flows() -> list[dict]:
    """Two conversations over two hours (times in seconds from the epoch)."""
    return [
        flow(100, bytes_out=10, bytes_in=1000, packets_out=1, packets_in=2),
        flow(400, bytes_out=20, bytes_in=2000, packets_out=3, packets_in=4, srcp=50001),
        flow(1000, bytes_out=30, bytes_in=None, packets_out=5, packets_in=6, srcp=50002),
        flow(3700, bytes_out=40, bytes_in=4000, packets_out=7, packets_in=8),
        flow(500, dst="10.0.0.53", dstp=53, proto="udp", service="dns", bytes_out=60),
        flow(5000, dst="10.0.0.53", dstp=53, proto="udp", service="dns", bytes_out=70),
        flow(6000, dst="10.0.0.53", dstp=53, proto="udp", service="dns", bytes_out=80),
    ]


def table(batch: Batch) -> dict[tuple[str, int, str], float]:
    """(dst, interval end in s, measurement) → value."""
    return {
        (dst, t // SECOND, m): v
        for dst, t, m, v in batch.frame.select("dst", "time", "measurement", "value").iter_rows()
    }


def test_exact_sums_per_interval():
    batch = conversations(make_flows(hand_flows()))
    got = table(batch)
    web, dns = "10.0.0.2", "10.0.0.53"
    assert {k: v for k, v in got.items() if k[0] == web} == {
        (web, 3600, "conn_bytes_out"): 60.0,
        (web, 3600, "conn_bytes_in"): 3000.0,  # an unknown count adds nothing
        (web, 3600, "conn_packets_out"): 9.0,
        (web, 3600, "conn_packets_in"): 12.0,
        (web, 3600, "conn_flows"): 3.0,
        (web, 3600, "conn_gap_s"): 450.0,  # (300 + 600) / 2: the first flow has none
        (web, 7200, "conn_bytes_out"): 40.0,
        (web, 7200, "conn_bytes_in"): 4000.0,
        (web, 7200, "conn_packets_out"): 7.0,
        (web, 7200, "conn_packets_in"): 8.0,
        (web, 7200, "conn_flows"): 1.0,
        (web, 7200, "conn_gap_s"): 2700.0,  # back to the flow at 1000 s
    }
    assert got[(dns, 3600, "conn_flows")] == 1.0
    assert (dns, 3600, "conn_gap_s") not in got
    assert got[(dns, 7200, "conn_gap_s")] == 2750.0  # (4500 + 1000) / 2
    assert got[(dns, 7200, "conn_bytes_out")] == 150.0
    assert batch.frame["srcp"].unique().to_list() == [""]  # the server port identifies it
    keys = dict(zip(batch.frame["dst"], batch.frame["key"], strict=True))
    assert keys[web] == entity_key(WEB) and keys[dns] == entity_key(DNS)


def test_intervals_wait_for_the_watermark():
    series = ConversationSeries(interval_s=3600, lateness_s=60)
    assert len(series.update(make_flows([flow(100), flow(3659)]))) == 0
    assert series.watermark == 3599 * SECOND
    assert len(series.update(make_flows([flow(3659.999999999)]))) == 0  # 1 ns short
    closed = series.update(make_flows([flow(3660)]))  # the watermark reaches 1 h
    assert table(closed)[("10.0.0.2", 3600, "conn_flows")] == 1.0  # the flow at 100 s
    assert series.emitted_until_ == HOUR and len(series.pending_) == 3


def test_late_flows_are_dropped_and_counted():
    series = ConversationSeries(interval_s=3600, lateness_s=300)
    first = series.update(make_flows([flow(100), flow(2 * 3600 + 600)]))
    assert table(first) == {
        ("10.0.0.2", 3600, m): v
        for m, v in {
            "conn_bytes_out": 100.0,
            "conn_bytes_in": 1000.0,
            "conn_packets_out": 2.0,
            "conn_packets_in": 3.0,
            "conn_flows": 1.0,
        }.items()
    }
    # 1 h 30 min is in the hour [1 h, 2 h), closed by the watermark (2 h 5 min): late
    second = series.update(make_flows([flow(5400), flow(7300)]))
    assert len(second) == 0 and series.late_ == 1
    rest = table(series.flush())
    assert rest[("10.0.0.2", 3 * 3600, "conn_flows")] == 2.0  # 2 h 1 min 40 s and 2 h 10 min
    # gaps: 7300 s - 100 s (the last flow of the emitted hour) and 7800 s - 7300 s
    assert rest[("10.0.0.2", 3 * 3600, "conn_gap_s")] == (7200 + 500) / 2
    series.update(make_flows([flow(3 * 3600 - 1)]))
    assert series.late_ == 2  # after flush every pending interval is closed


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_unordered_arrival_within_the_lateness_matches_the_ordered_result(seed):
    rng = random.Random(seed)
    rows = [
        flow(rng.uniform(0, 6 * 3600), dst=f"10.0.0.{rng.randint(2, 4)}", bytes_out=i)
        for i in range(400)
    ]
    expected = conversations(make_flows(rows)).frame.sort("time", "key", "measurement")
    # each flow arrives up to 2 h after its start, in chunks of 50: a lateness of 3 h
    # covers that disorder, so nothing is late and the result is the ordered one
    arrival = sorted(rows, key=lambda r: r["start"] + rng.uniform(0, 2 * HOUR))
    series = ConversationSeries(interval_s=3600, lateness_s=3 * 3600)
    parts = [series.update(make_flows(arrival[i : i + 50])) for i in range(0, 400, 50)]
    assert sum(len(p) for p in parts) > 0  # intervals were emitted on the way
    got = Batch.concat([*parts, series.flush()]).frame.sort("time", "key", "measurement")
    assert series.late_ == 0
    assert got.equals(expected)


def test_state_round_trip_continues_exactly():
    rows = hand_flows()
    whole = ConversationSeries(interval_s=1800, lateness_s=100)
    expected = Batch.concat(
        [whole.update(make_flows(rows[:4])), whole.update(make_flows(rows[4:])), whole.flush()]
    )
    first = ConversationSeries(interval_s=1800, lateness_s=100)
    out = [first.update(make_flows(rows[:4]))]
    state = decode_state(encode_state(first.state_dict()))  # as the store saves it
    second = ConversationSeries(interval_s=1800, lateness_s=100)
    second.load_state(state)
    out += [second.update(make_flows(rows[4:])), second.flush()]
    assert Batch.concat(out).frame.equals(expected.frame)
    assert second.late_ == whole.late_ == 1  # the DNS flow at 500 s came too late
    with pytest.raises(StateMismatchError):
        ConversationSeries(interval_s=3600).load_state(state)


def test_icmp_and_empty_input():
    icmp = flow(10, proto="icmp", srcp=None, dstp=None, service="")
    batch = conversations(make_flows([icmp]))
    assert batch.frame["dstp"].unique().to_list() == [""]
    assert len(conversations(Flows.empty())) == 0
    assert len(ConversationSeries().flush()) == 0
    with pytest.raises(ValueError, match="interval_s"):
        ConversationSeries(interval_s=0)


def test_real_log_totals_are_kept():
    flows = Flows.concat(list(read_zeek(DATA / "slips-test18.conn.log.labeled")))
    batch = conversations(flows, interval_s=60)
    sums = {m: batch.only(m).frame["value"].sum() for m in batch.measurements()}
    assert sums["conn_flows"] == 766
    assert sums["conn_bytes_out"] == flows.frame["bytes_out"].sum()
    assert sums["conn_packets_in"] == flows.frame["packets_in"].sum()
    # the RemcosRAT C2 conversation (port 5888) is one entity per minute
    c2 = batch.only("conn_flows").frame.filter(pl.col("dstp") == "5888")
    assert c2["key"].n_unique() == 1 and c2["value"].sum() > 100


def test_the_zscore_flags_a_burst_in_a_conversation():
    rows = [flow(h * 3600 + 60 * i, srcp=40000 + i) for h in range(12) for i in range(5 + h % 2)]
    rows += [flow(12 * 3600 + 10 * i, srcp=40000 + i) for i in range(60)]  # 60 flows in 10 min
    flows_per_hour = conversations(make_flows(rows)).only("conn_flows")
    times = flows_per_hour.frame["time"]
    past = Batch(flows_per_hour.frame.filter(times < 12 * HOUR + HOUR))
    now = Batch(flows_per_hour.frame.filter(times == 13 * HOUR))
    detector = ZScore(min_count=8)
    detector.learn(past, np.ones(len(past), dtype=bool))
    assert detector.score(now)[0] > 50
