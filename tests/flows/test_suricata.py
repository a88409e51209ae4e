"""Suricata EVE → Flows, on the Slips test6 capture (first 2,000 lines) and by hand."""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from datetime import UTC, datetime

import polars as pl
from flowdata import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.flows.schema import FLOW_SCHEMA, FlowReport, Flows
from netsentry.flows.suricata import read_eve

EVE = DATA / "eve-slips-test6.head2000.json"


def ns(*args: int) -> int:
    """Nanoseconds of a UTC datetime given down to microseconds."""
    dt = datetime(*args[:6], tzinfo=UTC)  # type: ignore[misc]
    return int(dt.timestamp()) * 10**9 + (args[6] * 1000 if len(args) > 6 else 0)


def read(source, **kwargs) -> tuple[Flows, FlowReport]:
    report = FlowReport()
    return Flows.concat(list(read_eve(source, report=report, **kwargs))), report


def test_counts_match_the_file():
    text = EVE.read_text()
    types = Counter(re.findall(r'"event_type":"([a-z_]+)"', text))
    flows, report = read(EVE)
    assert types["flow"] == 512  # grep -c '"event_type":"flow"'
    assert len(flows) == report.flows == types["flow"]
    assert report.lines == 2000 and report.error_count == 0 and report.merged == 0
    assert report.skipped == {k: v for k, v in types.items() if k != "flow"}
    assert report.skipped["alert"] == 745 and report.skipped["dns"] == 680


def test_hand_checked_rows():
    flows, _ = read(EVE)
    # line 120: flow_id 2232403389523415, an SMB probe from 91.238.203.56
    row = flows.frame.filter(pl.col("src") == "91.238.203.56", pl.col("srcp") == 48938).row(
        0, named=True
    )
    assert row == {
        "start": ns(2021, 6, 6, 15, 34, 31, 140759),  # 17:34:31.140759+0200
        "end": ns(2021, 6, 6, 15, 34, 31, 141012),
        "src": "91.238.203.56",
        "dst": "192.168.1.129",
        "srcp": 48938,
        "dstp": 445,
        "proto": "tcp",
        "service": "",
        "bytes_out": 120,
        "bytes_in": 120,
        "packets_out": 2,
        "packets_in": 2,
        "state": "closed",
        "source": "stratosphere.org",
    }
    # line 687: an HTTP flow, app_proto http
    http = flows.frame.filter(pl.col("srcp") == 59502).row(0, named=True)
    assert (http["service"], http["state"], http["bytes_out"], http["bytes_in"]) == (
        "http",
        "established",
        3724,
        888,
    )
    assert (http["packets_out"], http["packets_in"]) == (22, 12)
    assert http["end"] - http["start"] == ns(2021, 6, 6, 15, 43, 28, 321620) - ns(
        2021, 6, 6, 15, 41, 54, 276768
    )
    # "failed" protocol detection is an unknown service
    assert flows.frame.filter(pl.col("srcp") == 1900)["service"].unique().to_list() == [""]


def test_chunks_are_bounded_and_complete():
    whole, _ = read(EVE)
    report = FlowReport()
    chunks = list(read_eve(EVE, chunk_flows=100, report=report))
    assert [len(c) for c in chunks] == [100] * 5 + [12]
    assert Flows.concat(chunks).frame.equals(whole.frame)
    assert report.flows == 512


def test_gzip_and_stream_inputs(tmp_path):
    packed = tmp_path / "eve.json.gz"
    packed.write_bytes(gzip.compress(EVE.read_bytes()))
    assert len(read(packed)[0]) == 512
    flows, report = read(io.BytesIO(EVE.read_bytes()), name="sensor-7")
    assert len(flows) == 512 and report.source == "sensor-7"


def event(**fields) -> dict:
    base = {
        "timestamp": "2021-06-06T15:57:37.272281+0200",
        "flow_id": 1,
        "event_type": "flow",
        "src_ip": "10.0.0.1",
        "src_port": 40000,
        "dest_ip": "10.0.0.2",
        "dest_port": 80,
        "proto": "TCP",
        "flow": {
            "pkts_toserver": 3,
            "pkts_toclient": 2,
            "bytes_toserver": 300,
            "bytes_toclient": 200,
            "start": "2021-06-06T10:00:00.000001+0000",
            "end": "2021-06-06T10:00:01.000001+0000",
            "state": "closed",
        },
    }
    base.update(fields)
    return base


def lines(*events) -> bytes:
    return b"".join((e if isinstance(e, bytes) else json.dumps(e).encode()) + b"\n" for e in events)


def test_timestamps_are_exact_with_offsets():
    flows, report = read(
        io.BytesIO(
            lines(
                event(flow={**event()["flow"], "start": "2021-06-06T10:00:00.123456789+0000"}),
                event(flow={**event()["flow"], "start": "2021-06-06T12:00:00.000001+02:00"}),
                event(flow={**event()["flow"], "start": "2021-06-06T10:00:00Z"}),
            )
        )
    )
    assert report.error_count == 0
    base = ns(2021, 6, 6, 10, 0, 0)
    assert flows.frame["start"].to_list() == [base + 123456789, base + 1000, base]


def test_malformed_records_are_reported_with_file_and_line(tmp_path):
    good = event()
    bad_flow = event()
    del bad_flow["flow"]["end"]
    path = tmp_path / "eve.json"
    path.write_bytes(
        lines(
            good,  # 1
            b"{not json",  # 2
            bad_flow,  # 3
            event(flow={**good["flow"], "start": "2021-06-06T25:00:00+0200"}),  # 4
            event(flow={**good["flow"], "start": "2021-06-06T10:00:00"}),  # 5: no offset
            event(flow={**good["flow"], "bytes_toserver": -1}),  # 6
            event(src_ip="not-an-address"),  # 7
            b"[1, 2]",  # 8
            b"\xff\xfe garbage",  # 9
            {"event_type": "alert", "flow": {"start": 5}},  # 10: odd, but not a flow
            b"",  # blank: not a record
            event(dest_port=70000),  # 12
            good,  # 13
        )
    )
    flows, report = read(path)
    assert len(flows) == 2 and report.lines == 12
    assert report.skipped == {"alert": 1}
    where = {e.line_no: e for e in report.errors}
    assert sorted(where) == [2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert report.error_count == 9
    assert all(e.source == str(path) for e in report.errors)
    assert "invalid JSON" in where[2].reason
    assert where[3].reason == "flow event without flow.end"
    assert where[4].reason.startswith("invalid flow start 2021-06-06T25")
    assert where[5].reason.startswith("invalid flow start")
    assert ">= 0" in where[6].reason and "bytes_toserver" in where[6].reason
    assert where[7].reason == "invalid src_ip not-an-address"
    assert "<= 65535" in where[12].reason
    assert str(where[7]).startswith(f"{path}:7: invalid src_ip")


def netflow(flow_id, src, sp, dst, dp, pkts, nbytes, proto="TCP", **extra) -> dict:
    record = {
        "timestamp": "2021-06-06T10:00:05.000000+0000",
        "flow_id": flow_id,
        "event_type": "netflow",
        "src_ip": src,
        "dest_ip": dst,
        "proto": proto,
        "netflow": {
            "pkts": pkts,
            "bytes": nbytes,
            "start": "2021-06-06T10:00:00.000000+0000",
            "end": "2021-06-06T10:00:04.000000+0000",
            "age": 4,
        },
        **extra,
    }
    if sp is not None:
        record |= {"src_port": sp, "dest_port": dp}
    return record


def test_netflow_halves_are_folded_into_one_flow():
    data = lines(
        netflow(7, "10.0.0.1", 40000, "10.0.0.2", 443, 5, 500, app_proto="tls"),
        netflow(8, "10.0.0.3", 40001, "10.0.0.2", 22, 1, 60),  # no answer: one half only
        netflow(7, "10.0.0.2", 443, "10.0.0.1", 40000, 4, 4000, app_proto="tls"),
        netflow(9, "10.0.0.9", 53, "10.0.0.1", 50000, 1, 90, "UDP"),  # lone to-client half
        netflow(10, "10.0.0.1", None, "10.0.0.2", None, 1, 84, "ICMP"),
    )
    flows, report = read(io.BytesIO(data))
    assert report.merged == 1 and report.flows == 4 and report.error_count == 0
    rows = flows.frame.select("src", "srcp", "dst", "dstp", "proto", "service")
    assert rows.rows() == [
        ("10.0.0.1", 40000, "10.0.0.2", 443, "tcp", "tls"),
        ("10.0.0.3", 40001, "10.0.0.2", 22, "tcp", ""),
        ("10.0.0.9", 53, "10.0.0.1", 50000, "udp", ""),
        ("10.0.0.1", None, "10.0.0.2", None, "icmp", ""),
    ]
    counts = flows.frame.select("bytes_out", "bytes_in", "packets_out", "packets_in").rows()
    assert counts == [(500, 4000, 5, 4), (60, 0, 1, 0), (90, 0, 1, 0), (84, 0, 1, 0)]
    assert flows.frame["state"].to_list() == ["", "", "", ""]


GOOD = lines(event(), {"event_type": "dns", "dns": {"type": "query"}}, event(flow_id=2))
garbage = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.dictionaries(st.sampled_from(list(event())), st.none() | st.integers() | st.text()).map(
        lambda d: json.dumps({**event(), **d}).encode()
    ),
)


@settings(max_examples=150, deadline=None)
@given(extra=st.lists(garbage, max_size=5), at=st.integers(0, 3))
def test_garbage_lines_never_crash_and_are_accounted(extra, at):
    good = GOOD.splitlines()
    extra = [g.replace(b"\n", b" ").replace(b"\r", b" ") for g in extra]
    data = b"\n".join(good[:at] + extra + good[at:]) + b"\n"
    flows, report = read(io.BytesIO(data), chunk_flows=2)
    assert report.lines == report.flows + sum(report.skipped.values()) + report.error_count
    assert len(flows) == report.flows >= 2  # the good flow lines are kept
    assert dict(flows.frame.schema) == FLOW_SCHEMA
    required = flows.frame.select("start", "end", "src", "dst", "proto", "source")
    assert sum(required.null_count().row(0)) == 0  # a kept row is complete
    assert all(e.line_no <= data.count(b"\n") for e in report.errors)
