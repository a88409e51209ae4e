"""Zeek conn.log → Flows: Slips and IoT-23 logs (TSV and JSON), headers, bad lines."""

from __future__ import annotations

import io
from collections import Counter

import polars as pl
import pytest
from flowdata import DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.flows.schema import FLOW_SCHEMA, LABEL_SCHEMA, FlowReport, Flows
from netsentry.flows.zeek import read_zeek

LOGS = {
    "slips-test18.conn.log.labeled": 766,
    "slips-portscan-horizontal.conn.log": 41,
    "slips-portscan-vertical.conn.log": 50,  # Zeek JSON logging
    "iot23-honeypot-4-1.conn.log.labeled": 452,  # three spaces before the labels
}


def read(source, **kwargs) -> tuple[Flows, FlowReport]:
    report = FlowReport()
    return Flows.concat(list(read_zeek(source, report=report, **kwargs))), report


@pytest.mark.parametrize(("name", "expected"), LOGS.items())
def test_one_flow_per_data_line(name, expected):
    path = DATA / name
    data_lines = [line for line in path.read_text().splitlines() if line.strip() and line[0] != "#"]
    flows, report = read(path)
    assert len(data_lines) == expected
    assert len(flows) == report.flows == report.lines == expected
    assert report.error_count == 0
    assert flows.has_labels == name.endswith(".labeled")
    assert flows.frame["source"].unique().to_list() == [str(path)]


def test_hand_checked_tsv_rows():
    flows, _ = read(DATA / "slips-test18.conn.log.labeled")
    first = flows.frame.row(0, named=True)
    assert first == {
        "start": 1677024003_714845000,
        "end": 1677024003_714845000 + 37_629_000,  # duration 0.037629
        "src": "192.168.1.107",
        "dst": "66.63.168.35",
        "srcp": 65164,
        "dstp": 5888,
        "proto": "tcp",
        "service": "",  # unset "-"
        "bytes_out": 0,
        "bytes_in": 0,
        "packets_out": 2,
        "packets_in": 2,
        "state": "REJ",
        "source": str(DATA / "slips-test18.conn.log.labeled"),
        "label": "Malicious",
        "detailed_label": "From_malicious-To_malicious-Malware_data_exfiltration-RemcosRAT",
    }
    # line 137: ICMP, where Zeek writes the ICMP type and code as ports
    icmp = flows.frame.filter(pl.col("start") == 1677024021_618037000).row(0, named=True)
    assert (icmp["proto"], icmp["srcp"], icmp["dstp"]) == ("icmp", None, None)
    assert (icmp["bytes_out"], icmp["packets_out"], icmp["state"]) == (9720, 30, "OTH")
    # awk -F"\t" '{print $22}' | sort | uniq -c on the data lines
    assert Counter(flows.frame["label"]) == {"Benign": 44, "Malicious": 719, "Unknown": 3}


def test_iot23_three_space_labels():
    path = DATA / "iot23-honeypot-4-1.conn.log.labeled"
    flows, _ = read(path)
    first = flows.frame.row(0, named=True)
    assert (first["start"], first["end"]) == (1540469302_538640000, 1540469302_652824000)
    assert (first["src"], first["srcp"], first["dst"], first["dstp"]) == (
        "192.168.1.132",
        58687,
        "216.239.35.4",
        123,
    )
    assert (first["bytes_out"], first["bytes_in"], first["state"]) == (48, 48, "SF")
    assert (first["label"], first["detailed_label"]) == ("benign", None)  # "-" is unset
    # the labels as the file has them: the last of the three-space separated fields
    expected = Counter(
        line.split("   ")[-2] for line in path.read_text().splitlines() if line and line[0] != "#"
    )
    assert Counter(flows.frame["label"]) == expected


def test_zeek_json_rows():
    flows, _ = read(DATA / "slips-portscan-vertical.conn.log")
    first = flows.frame.row(0, named=True)
    # "ts":1700828217.314165, "duration":0.20696377754211426
    assert first["start"] == 1700828217_314165000
    assert first["end"] - first["start"] == 206_964_000  # to the microsecond, as in TSV
    assert (first["srcp"], first["dstp"], first["state"], first["service"]) == (
        50820,
        443,
        "REJ",
        "",
    )
    assert flows.frame["dst"].value_counts().sort("count")["count"].to_list()[-1] == 46


HEADER = (
    "#separator \\x09\n"
    "#unset_field\t-\n"
    "#empty_field\t(empty)\n"
    "#fields\tts\tuid\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tproto\tservice\t"
    "duration\torig_bytes\tresp_bytes\tconn_state\torig_pkts\tresp_pkts\n"
    "#types\ttime\tstring\taddr\tport\taddr\tport\tenum\tstring\tinterval\tcount\tcount\t"
    "string\tcount\tcount\n"
)
GOOD = "10.5\tC1\t10.0.0.1\t1234\t10.0.0.2\t80\ttcp\thttp\t1.25\t10\t20\tSF\t3\t4"


def test_malformed_lines_are_reported_with_file_and_line(tmp_path):
    lines = [
        GOOD,  # 7
        GOOD.replace("\tSF", ""),  # 8: a field short
        GOOD.replace("10.5", "1e9"),  # 9
        GOOD.replace("1234", "70000"),  # 10
        GOOD.replace("\t10\t", "\tten\t"),  # 11
        GOOD.replace("10.0.0.2", "ten.zero"),  # 12
        GOOD.replace("1.25", "-1"),  # 13
        "#fields\tts\tuid",  # 14: a bad header; the one before stays in force
        "",  # blank
        GOOD.replace("tcp\thttp", "tcp\t-"),  # 16: unset service
        GOOD.replace("10.5", "99999999999"),  # 17: past int64 nanoseconds
        "{bad json",  # 18
        GOOD.replace("10.5", "\uff11\uff10.5"),  # 19: full-width digits
    ]
    path = tmp_path / "conn.log"
    path.write_text("1.0\tC0\n" + HEADER + "\n".join(lines) + "\n")
    flows, report = read(path)
    where = {e.line_no: e.reason for e in report.errors}
    assert where.pop(18).startswith("invalid conn record: JSON is malformed")
    assert where == {
        1: "data before a #fields header",
        8: "expected 14 fields, got 13",
        9: "invalid ts 1e9",
        10: "invalid id.orig_p 70000",
        11: "invalid orig_bytes ten",
        12: "invalid id.resp_h ten.zero",
        13: "invalid duration -1",
        14: "#fields without id.orig_h, id.orig_p, id.resp_h, id.resp_p, proto",
        17: "invalid ts 99999999999",
        19: "invalid ts \uff11\uff10.5",
    }
    assert report.error_count == 11 and report.flows == len(flows) == 2
    assert report.lines == 13  # headers and blank lines are no data lines
    assert all(e.source == str(path) for e in report.errors)
    assert str(report.errors[1]).startswith(f"{path}:8: expected 14 fields")
    assert flows.frame["service"].to_list() == ["http", ""]
    assert flows.frame.row(0) == (
        10_500_000_000,
        11_750_000_000,
        "10.0.0.1",
        "10.0.0.2",
        1234,
        80,
        "tcp",
        "http",
        10,
        20,
        3,
        4,
        "SF",
        str(path),
    )


def test_invalid_utf8_line_is_an_error():
    data = (HEADER + GOOD + "\n").encode() + b"\xff\xfe\xfd\n" + (GOOD + "\n").encode()
    flows, report = read(io.BytesIO(data))
    assert len(flows) == 2
    assert [(e.line_no, e.reason) for e in report.errors] == [(7, "invalid UTF-8")]


def test_concatenated_logs_and_crlf():
    horizontal = (DATA / "slips-portscan-horizontal.conn.log").read_bytes()
    test18 = (DATA / "slips-test18.conn.log.labeled").read_bytes().replace(b"\n", b"\r\n")
    flows, report = read(io.BytesIO(horizontal + test18), chunk_flows=100)
    assert len(flows) == 41 + 766 and report.error_count == 0
    assert flows.frame["label"].null_count() == 41  # the unlabelled log's rows
    assert flows.frame["detailed_label"].drop_nulls().str.ends_with("\r").sum() == 0


def test_chunks_are_bounded_and_equal_to_one_pass():
    path = DATA / "slips-test18.conn.log.labeled"
    chunks = list(read_zeek(path, chunk_flows=100))
    assert max(len(c) for c in chunks) == 100 and len(chunks) == 8
    assert Flows.concat(chunks).frame.equals(read(path)[0].frame)
    assert dict(chunks[0].frame.schema) == {**FLOW_SCHEMA, **LABEL_SCHEMA}


noise = st.text(st.characters(blacklist_characters="\n\r"), max_size=120).filter(
    lambda s: not s.startswith("#")
)
tsv_like = st.lists(
    st.sampled_from(["-", "(empty)", "10.0.0.1", "80", "tcp", "x", "", "1.5", "-1", "::1"]),
    min_size=12,
    max_size=16,
).map("\t".join)


@settings(max_examples=150, deadline=None)
@given(extra=st.lists(noise | tsv_like, max_size=5), at=st.integers(0, 2))
def test_garbage_lines_never_crash_and_are_accounted(extra, at):
    good = [GOOD, GOOD.replace("10.5", "11.5")]
    text = HEADER + "\n".join(good[:at] + extra + good[at:]) + "\n"
    flows, report = read(io.BytesIO(text.encode("utf-8", "surrogatepass")), chunk_flows=3)
    assert report.lines == report.flows + report.error_count
    assert len(flows) == report.flows >= 2
    assert sorted(flows.frame["start"].to_list())[-1] >= 11_500_000_000
    required = flows.frame.select("start", "end", "src", "dst", "proto", "source")
    assert sum(required.null_count().row(0)) == 0  # a kept row is complete


headers = st.text(st.characters(blacklist_characters="\n\r"), max_size=60).map(lambda s: "#" + s)
header_words = st.sampled_from(
    ["#separator \\x09", "#separator ,", "#fields\tts", "#unset_field\t"]
)


@settings(max_examples=100, deadline=None)
@given(extra=st.lists(headers | header_words | noise, max_size=6), at=st.integers(0, 2))
def test_garbage_headers_never_crash(extra, at):
    good = [GOOD, GOOD.replace("10.5", "11.5")]
    text = HEADER + "\n".join(good[:at] + extra + good[at:]) + "\n"
    flows, report = read(io.BytesIO(text.encode("utf-8", "surrogatepass")), chunk_flows=2)
    assert dict(flows.frame.schema) == FLOW_SCHEMA
    assert report.lines == report.flows + report.error_count
    assert report.flows >= at  # the good lines before any garbage header are kept


def test_zeek_json_iso_times_and_bad_records():
    record = '{"ts":%s,"id.orig_h":"10.0.0.1","id.orig_p":1,"id.resp_h":"10.0.0.2",'
    record += '"id.resp_p":53,"proto":"udp","duration":0.5,"label":"Benign"}'
    lines = [
        record % '"2023-11-24T12:16:57.314165Z"',
        record % '"2023-11-24T13:16:57.314165+01:00"',
        record % '"2023-11-24T12:16:57"',  # no offset: the zone is unknown
        record % "-1.5",
        record.replace('"id.orig_p":1', '"id.orig_p":"one"') % "1.0",
    ]
    flows, report = read(io.BytesIO("\n".join(lines).encode()))
    assert flows.frame["start"].to_list() == [1700828217_314165000] * 2
    assert flows.frame["end"].to_list() == [1700828217_814165000] * 2
    assert flows.frame["label"].to_list() == ["Benign"] * 2
    reasons = {e.line_no: e.reason for e in report.errors}
    assert reasons[3] == "invalid ts 2023-11-24T12:16:57"
    assert ">= 0" in reasons[4] and "$.id.orig_p" in reasons[5]
