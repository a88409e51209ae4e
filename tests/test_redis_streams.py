"""Flows in Redis Streams, against a real redis-server on a free loopback port: exact
round trips, trimming, expiry, consumer groups, a crashed worker, Redis down."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from netsentry.flows.conversations import conversations
from netsentry.flows.pcap import read_pcap
from netsentry.flows.schema import Flows
from netsentry.flows.zeek import read_zeek
from netsentry.store.redis_streams import (
    FlowStreamConsumer,
    FlowStreams,
    StoreUnavailableError,
    conversation_keys,
)
from redis_server import client, redis_server

DATA = Path(__file__).parent / "data"
SORT = ["start", "src", "srcp", "dst", "dstp", "proto"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    process, port = redis_server(tmp_path_factory.mktemp("redis"))
    process.start()
    yield port
    process.stop()


@pytest.fixture
def store(server) -> FlowStreams:
    return FlowStreams(client(server), prefix=f"test:{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def honeypot() -> Flows:
    return Flows.concat(list(read_pcap(DATA / "pcap" / "iot23-honeypot-4-1.pcap.xz")))


def read_back(store: FlowStreams) -> pl.DataFrame:
    parts = [store.flows(key) for key in store.conversations()]
    return Flows.concat(parts).frame.sort(SORT)


@pytest.mark.parametrize(
    "path",
    [
        "pcap/iot23-honeypot-4-1.pcap.xz",
        "pcap/test12-icmp-portscan.pcap",  # ICMP: null ports
        "flows/iot23-honeypot-4-1.conn.log.labeled",  # labels
    ],
)
def test_round_trip_is_exact(store, path):
    reader = read_zeek if path.startswith("flows") else read_pcap
    flows = Flows.concat(list(reader(DATA / path)))
    ids = store.add(flows)
    keys = store.conversations()
    assert len(ids) == len(keys)  # one index entry per conversation written
    # the streams are the conversations of conversations.py: the same entity keys
    assert set(keys) == set(conversations(flows).frame["key"].to_list())
    assert read_back(store).equals(flows.frame.sort(SORT))


def test_trimming_keeps_the_newest(store, honeypot):
    one = honeypot.frame.filter(pl.col("dst") == "239.255.255.250")  # SSDP: one conversation
    assert conversation_keys(Flows(one)).n_unique() == 1
    small = FlowStreams(store.client, prefix=store.prefix, maxlen=10)
    for _ in range(60):
        small.add(Flows(one))
    stored = small.flows(small.conversations()[0])
    assert 60 * one.height > 110 and 10 <= len(stored) <= 110  # MAXLEN ~: nodes of 100
    assert stored.frame.equals(pl.concat([one] * 60).tail(len(stored)))


def test_streams_expire_after_their_last_write(store, honeypot):
    short = FlowStreams(store.client, prefix=store.prefix, ttl_s=0.4)
    short.add(Flows(honeypot.frame.head(5)))
    keys = short.conversations()
    assert keys and all(0 < store.client.pttl(short.stream(k)) <= 400 for k in keys)
    time.sleep(0.25)
    short.add(Flows(honeypot.frame.head(1)))  # refreshes the first conversation only
    time.sleep(0.25)
    assert short.conversations() == conversation_keys(Flows(honeypot.frame.head(1))).to_list()
    assert store.client.pttl(short.index) == -1  # the index does not expire


def test_two_consumers_share_the_work(store, honeypot):
    ids = store.add(honeypot)
    a = FlowStreamConsumer(store, "workers", "a")
    b = FlowStreamConsumer(store, "workers", "b")
    got: dict[str, list] = {"a": [], "b": []}
    while True:
        batch_a, batch_b = a.poll(count=3), b.poll(count=3)  # 16 conversations
        if not batch_a and not batch_b:
            break
        got["a"] += batch_a
        got["b"] += batch_b
        assert a.ack(batch_a) == len(batch_a) and b.ack(batch_b) == len(batch_b)
    seen_a, seen_b = {d.id for d in got["a"]}, {d.id for d in got["b"]}
    assert seen_a and seen_b and not seen_a & seen_b
    assert seen_a | seen_b == set(ids)
    deliveries = got["a"] + got["b"]
    assert all(len(d.flows) == d.count for d in deliveries)
    total = Flows.concat([d.flows for d in deliveries]).frame.sort(SORT)
    assert total.equals(honeypot.frame.sort(SORT))
    assert a.pending() == 0


def test_a_crashed_consumers_entries_are_claimed(store, honeypot):
    store.add(Flows(honeypot.frame.head(200)))
    crashed = FlowStreamConsumer(store, "workers", "crashed", claim_idle_s=0.2)
    taken = crashed.poll(count=10)  # ... and never acknowledged
    assert len(taken) == 10 and crashed.pending() == 10
    other = FlowStreamConsumer(store, "workers", "other", claim_idle_s=0.2)
    fresh = other.poll(count=10)  # too soon to claim: new entries only
    assert not {d.id for d in fresh} & {d.id for d in taken}
    other.ack(fresh)
    time.sleep(0.3)
    claimed = other.poll(count=10)
    assert [d.id for d in claimed] == [d.id for d in taken]
    assert all(d.flows.frame.equals(t.flows.frame) for d, t in zip(claimed, taken, strict=True))
    assert other.ack(claimed) == 10 and other.pending() == 0


def test_redis_down_is_a_clear_error_and_nothing_is_acknowledged(tmp_path, honeypot):
    process, port = redis_server(tmp_path)
    process.start()
    try:
        store = FlowStreams(client(port))
        store.add(Flows(honeypot.frame.head(50)))
        worker = FlowStreamConsumer(store, "workers", "w")
        taken = worker.poll(count=5)
        assert worker.pending() == 5
        client(port).shutdown(save=True)  # down, its data saved to tmp_path/dump.rdb
        process.process.wait(10)
        with pytest.raises(
            StoreUnavailableError, match=f"Redis at 127.0.0.1:{port} is unavailable"
        ):
            worker.ack(taken)
        with pytest.raises(StoreUnavailableError):
            store.add(Flows(honeypot.frame.head(5)))
        with pytest.raises(StoreUnavailableError):
            worker.poll()
        process.start()  # back, with the saved data
        assert worker.pending() == 5  # the failed ack acknowledged nothing
        assert worker.ack(taken) == 5 and worker.pending() == 0
        assert len(Flows.concat([store.flows(k) for k in store.conversations()])) == 50
        assert len(store.add(Flows(honeypot.frame.head(5)))) >= 1  # its script reloaded
    finally:
        process.stop()
