"""The seed's learning features: time since the previous flow, log bins, one-hot."""

from __future__ import annotations

import math

import polars as pl
import pytest
from flowdata import DATA, flow, make_flows

from netsentry.flows.conversations import conversations
from netsentry.flows.features import FEATURES, flow_features
from netsentry.flows.schema import Flows
from netsentry.flows.zeek import read_zeek


def test_values_bins_and_one_hot_by_hand():
    rows = [
        flow(10.0, bytes_out=0, bytes_in=1, packets_out=1, packets_in=2),
        flow(10.5, bytes_out=1023, bytes_in=None, packets_out=3, packets_in=7),
        flow(5.0, dst="10.0.0.9", bytes_out=2**40, packets_out=1, packets_in=0),
        flow(9.0),  # before 10.0: input order does not matter
    ]
    f = flow_features(make_flows(rows), n_bins=16)
    web = f.filter(pl.col("dst") == "10.0.0.2")
    assert web["start"].to_list() == [9 * 10**9, 10 * 10**9, 10_500_000_000]
    assert web["dt_s"].to_list() == [None, 1.0, 0.5]
    assert web["dt_log"][1] == pytest.approx(math.log2(1001))  # 1000 ms
    assert web["dt_bin"].to_list() == [None, 9, 8]  # 2**9 - 1 <= 1000 < 2**10 - 1
    assert web["bytes_out_bin"].to_list() == [6, 0, 10]  # 100, 0, 1023 bytes
    assert web["bytes_in_bin"].to_list() == [9, 1, None]  # unknown: no bin
    assert web["packets_in_bin"].to_list() == [2, 1, 3]
    far = f.filter(pl.col("dst") == "10.0.0.9").row(0, named=True)
    assert far["bytes_out_bin"] == 15 and far["packets_in_bin"] == 0  # the last bin caps
    # exactly one hot column per known value, none for a missing one
    for name in FEATURES:
        hot = f.select(pl.sum_horizontal(pl.col(f"^{name}_\\d+$"))).to_series().to_list()
        known = f[f"{name}_bin"].is_not_null().cast(pl.Int64).to_list()
        assert hot == known
    assert web["dt_9"].to_list() == [0, 1, 0]


def test_keys_match_the_conversation_batches_and_previous_continues():
    flows = Flows.concat(list(read_zeek(DATA / "slips-test18.conn.log.labeled")))
    f = flow_features(flows, one_hot=False)
    assert f.height == 766 and f.width == 2 + 5 + 1 + 2 * len(FEATURES)
    batch_keys = set(conversations(flows).frame["key"].to_list())
    assert set(f["key"].to_list()) == batch_keys
    # one conversation is one contiguous, ordered sequence
    runs = f.select((pl.col("key") != pl.col("key").shift(1)).sum()).item()
    assert runs == f["key"].n_unique() - 1
    assert f.select((pl.col("start").diff().over("key") >= 0).all()).item()
    # split in two: the second half's first dt continues from the first half
    half = flows.frame.sort("start")
    first, second = Flows(half[:400]), Flows(half[400:])
    previous = (
        first.frame.select(
            "src", "dst", pl.col("dstp").cast(pl.String).fill_null(""), "proto", "service", "start"
        )
        .group_by("src", "dst", "dstp", "proto", "service")
        .agg(pl.col("start").max().alias("last_start"))
    )
    continued = flow_features(second, one_hot=False, previous=previous)
    whole = f.filter(pl.col("start") >= half["start"][400])
    joined = continued.join(whole, on=["key", "start"], suffix="_whole")
    assert joined.height == continued.height
    assert joined["dt_s"].equals(joined["dt_s_whole"], check_names=False)


def test_bins_must_be_positive():
    with pytest.raises(ValueError, match="n_bins"):
        flow_features(make_flows([flow(1)]), n_bins=0)
