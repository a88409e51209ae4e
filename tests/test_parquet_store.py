"""Flows and Batches in day-partitioned Parquet: exact round trips, UTC midnight,
partition pruning, and a writer killed half-way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from netsentry.flows.conversations import conversations
from netsentry.flows.pcap import read_pcap
from netsentry.flows.schema import FLOW_SCHEMA, Flows
from netsentry.flows.zeek import read_zeek
from netsentry.store.parquet import ParquetStore

DATA = Path(__file__).parent / "data"
SORT = ["start", "src", "srcp", "dst", "dstp", "proto", "end"]
DAY = 86_400 * 1_000_000_000
MIDNIGHT = 1540512000 * 1_000_000_000  # 2018-10-26T00:00:00Z, inside the honeypot capture


@pytest.fixture(scope="module")
def honeypot() -> Flows:
    return Flows.concat(list(read_pcap(DATA / "pcap" / "iot23-honeypot-4-1.pcap.xz")))


def test_flows_round_trip_exactly_by_day(tmp_path, honeypot):
    store = ParquetStore(tmp_path)
    files = store.write_flows(honeypot)
    assert [f.parent.name for f in files] == ["day=2018-10-25", "day=2018-10-26"]
    got = store.flows()
    assert got.frame.sort(SORT).equals(honeypot.frame.sort(SORT))
    assert got.frame["start"].is_sorted()
    before = store.flows(end_ns=MIDNIGHT).frame
    after = store.flows(MIDNIGHT).frame
    assert before["start"].max() < MIDNIGHT <= after["start"].min()
    assert before.height + after.height == len(honeypot)


def test_labelled_flows_and_batches_round_trip(tmp_path, honeypot):
    store = ParquetStore(tmp_path)
    labelled = Flows.concat(list(read_zeek(DATA / "flows" / "iot23-honeypot-4-1.conn.log.labeled")))
    store.write_flows(labelled)
    assert store.flows().frame.sort(SORT).equals(labelled.frame.sort(SORT))
    batch = conversations(honeypot)
    store.write_batch(batch)
    order = ["time", "measurement", "key"]
    assert store.batch().frame.sort(order).equals(batch.frame.sort(order))
    assert store.flows().has_labels  # the batches live apart


def test_partitions_split_at_utc_midnight(tmp_path):
    starts = [MIDNIGHT - DAY, MIDNIGHT - 1, MIDNIGHT, MIDNIGHT + DAY - 1, MIDNIGHT + DAY]
    rows = [
        dict(
            start=s,
            end=s,
            src="10.0.0.1",
            dst="10.0.0.2",
            srcp=1,
            dstp=2,
            proto="tcp",
            service="",
            bytes_out=1,
            bytes_in=None,
            packets_out=1,
            packets_in=None,
            state="",
            source="hand",
        )
        for s in starts
    ]
    store = ParquetStore(tmp_path)
    store.write_flows(Flows(pl.DataFrame(rows, schema=FLOW_SCHEMA)))
    days = [p.parent.name for p in sorted(tmp_path.glob("flows/day=*/*.parquet"))]
    assert days == ["day=2018-10-25", "day=2018-10-26", "day=2018-10-27"]
    assert store.flows(MIDNIGHT, MIDNIGHT + DAY).frame["start"].to_list() == starts[2:4]
    assert store.flows(MIDNIGHT - 1, MIDNIGHT + 1).frame["start"].to_list() == starts[1:3]


def test_other_days_are_never_opened(tmp_path, honeypot):
    store = ParquetStore(tmp_path)
    store.write_flows(honeypot)
    other = tmp_path / "flows" / "day=2018-10-20"
    other.mkdir()
    (other / "part-garbage.parquet").write_bytes(b"not parquet at all")
    assert len(store.flows(MIDNIGHT, MIDNIGHT + DAY)) > 0  # pruned: not read
    with pytest.raises(pl.exceptions.ComputeError):
        store.flows()  # every day: the garbage is read


WRITER = """
import resource, signal, sys
import polars as pl
from netsentry.flows.pcap import read_pcap
from netsentry.flows.schema import Flows
from netsentry.store.parquet import ParquetStore
flows = Flows.concat(list(read_pcap(sys.argv[2])))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores it; the kernel's default kills
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # SIGXFSZ: killed past 4 KiB
ParquetStore(sys.argv[1]).write_flows(flows)  # files of 10-13 KB
"""


def test_a_writer_killed_mid_write_leaves_nothing_visible(tmp_path, honeypot):
    store = ParquetStore(tmp_path)
    committed = Flows(honeypot.frame.head(100))
    store.write_flows(committed)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            WRITER,
            str(tmp_path),
            str(DATA / "pcap" / "iot23-honeypot-4-1.pcap.xz"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
    )
    assert done.returncode == -signal.SIGXFSZ  # killed while writing its first file
    partial = list(tmp_path.glob("flows/day=*/.part-*.tmp"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size <= 4096
    assert store.flows().frame.sort(SORT).equals(committed.frame.sort(SORT))
    assert store.remove_stale(older_than_s=0) == partial and not partial[0].exists()
