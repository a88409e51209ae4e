"""InfluxDB CSV exports: the plain RIoT form and InfluxDB 2.x annotated CSV."""

from __future__ import annotations

import calendar
import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsentry.ingest.errors import ParseResult
from netsentry.ingest.influx_csv import parse_rfc3339_ns, read_influx_csv
from netsentry.keys import entity_key
from netsentry.model import KEY_TAGS

DATA = Path(__file__).parent / "data"
RIOT = DATA / "riot_bytes_total_head.csv"
ANNOTATED = DATA / "influx2_annotated.csv"
HEADER = "_time,_value,dst,dstp,proto,service,src,srcp,url,hash_table,_value_diff"


def rows(result: ParseResult) -> list[dict[str, Any]]:
    return list(result.batch.frame.iter_rows(named=True))


def errors(result: ParseResult) -> list[tuple[int, str]]:
    return [(e.line_no, e.reason) for e in result.errors]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    return path


# --- the plain RIoT export ----------------------------------------------------------


def test_riot_head_matches_an_independent_reading() -> None:
    result = read_influx_csv(RIOT, measurement="tdmp_bytes_total")
    assert result.errors == [] and result.ignored_fields == 0
    with RIOT.open(newline="") as f:
        expected = list(csv.DictReader(f))
    assert len(expected) == 199 == result.lines == len(result.batch)
    for got, want in zip(rows(result), expected, strict=True):
        t = np.datetime64(want["_time"].removesuffix("Z"), "ns").astype(np.int64)
        assert got["time"] == int(t)
        assert got["value"] == float(want["_value"])
        assert got["measurement"] == "tdmp_bytes_total"
        tags = {t: want[t] for t in KEY_TAGS}
        assert {t: got[t] for t in KEY_TAGS} == tags
        assert got["key"] == entity_key(tags)
    assert set(result.batch.frame.columns) == {"time", "measurement", "value", "key", *KEY_TAGS}


def test_riot_first_row() -> None:
    first = rows(read_influx_csv(str(RIOT), measurement="m"))[0]
    assert first["time"] == 1639069200 * 10**9  # 2021-12-09T17:00:00Z
    assert first["value"] == 252.0
    assert (first["dst"], first["dstp"], first["proto"]) == ("94.234.170.123", "munin", "tcp")
    assert (first["src"], first["srcp"]) == ("demo.riotlocal", "iotserver-exchange")
    assert first["url"] == "http://demo.riotsecure.io:7888/metrics"


def test_measurement_is_required_without_a_measurement_column() -> None:
    with pytest.raises(ValueError, match="no _measurement column"):
        read_influx_csv(RIOT)


def test_measurement_column_wins_and_field_column_is_mapped() -> None:
    text = (
        "_time,_value,_measurement,_field,src\n"
        "2021-12-13T08:13:43.895385838Z,1,net,value,a\n"
        "2021-12-13T08:13:43Z,2,net,rx,a\n"
        "2021-12-13T08:13:43Z,3,prometheus,up,a\n"
    )
    result = read_influx_csv(io.StringIO(text), measurement="ignored")
    assert [(r["measurement"], r["value"]) for r in rows(result)] == [
        ("net", 1.0),
        ("net_rx", 2.0),
        ("up", 3.0),
    ]
    assert rows(result)[0]["time"] == 1639383223895385838


def test_source_names(tmp_path: Path) -> None:
    path = write(tmp_path, f"{HEADER}\nbad,1,,,,,,,,,\n")
    assert read_influx_csv(path, measurement="m").errors[0].source == str(path)
    assert read_influx_csv(path, measurement="m", source_name="x").errors[0].source == "x"
    stream = io.StringIO(f"{HEADER}\nbad,1,,,,,,,,,\n")
    assert read_influx_csv(stream, measurement="m").errors[0].source == "input"
    with path.open() as f:
        assert read_influx_csv(f, measurement="m").errors[0].source == str(path)


def test_bad_rows_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    good = "a,b,tcp,http,c,d,u,h,"
    text = "\n".join(
        [
            HEADER,
            f"2021-12-09T17:00:00Z,1.5,{good}",  # 2
            f"2021-13-09T17:00:00Z,2,{good}",  # 3 month 13
            f"yesterday,2,{good}",  # 4
            f"2021-12-09T17:00:00.1234567890Z,2,{good}",  # 5 ten digits
            f"2021-12-31T23:59:60Z,2,{good}",  # 6 leap second
            f"2021-12-09T17:00:00Z,abc,{good}",  # 7
            f"2021-12-09T17:00:00Z,inf,{good}",  # 8
            f"2021-12-09T17:00:00Z,-Infinity,{good}",  # 9
            f"2021-12-09T17:00:00Z,1e400,{good}",  # 10
            f"2021-12-09T17:00:00Z,,{good}",  # 11
            "2021-12-09T17:00:00Z,3,too,few",  # 12
            '2021-12-09T17:00:01Z,4,a,b,tcp,http,c,d,"multi\nline url",h,',  # 13-14
            f"2300-01-01T00:00:00Z,5,{good}",  # 15 beyond int64 ns
            f"2021-12-09T17:00:02Z,-6e-1,{good}",  # 16
            "",
        ]
    )
    result = read_influx_csv(write(tmp_path, text), measurement="m")
    assert errors(result) == [
        (3, "invalid time '2021-13-09T17:00:00Z'"),
        (4, "invalid time 'yesterday'"),
        (5, "invalid time '2021-12-09T17:00:00.1234567890Z'"),
        (6, "invalid time '2021-12-31T23:59:60Z'"),
        (7, "non-numeric _value 'abc'"),
        (8, "non-finite _value inf"),
        (9, "non-finite _value -Infinity"),
        (10, "non-finite _value 1e400"),
        (11, "missing _value"),
        (12, "expected 11 cells, got 4"),
        (15, "time '2300-01-01T00:00:00Z' out of range (int64 nanoseconds)"),
    ]
    assert [(r["value"], r["url"]) for r in rows(result)] == [
        (1.5, "u"),
        (4.0, "multi\nline url"),
        (-0.6, "u"),
    ]
    assert result.lines == 14  # the row on lines 13-14 is one record


def test_bom_blank_lines_and_crlf(tmp_path: Path) -> None:
    text = f"\ufeff{HEADER}\r\n2021-12-09T17:00:00Z,1,a,,,,,,,,\r\n\r\n"
    path = tmp_path / "bom.csv"
    path.write_bytes(text.encode("utf-8"))
    result = read_influx_csv(path, measurement="m")
    assert result.errors == [] and [r["dst"] for r in rows(result)] == ["a"]


def test_header_without_time_or_value_is_reported_and_its_table_skipped() -> None:
    text = "a,b\n1,2\n3,4\n\n_time,_value\n1970-01-01T00:00:00Z,9\n"
    result = read_influx_csv(io.StringIO(text), measurement="m")
    assert errors(result) == [(1, "header without _time and _value column")]
    assert [(r["time"], r["value"]) for r in rows(result)] == [(0, 9.0)]


def test_empty_measurement_cell_is_an_error() -> None:
    text = "_time,_value,_measurement\n1970-01-01T00:00:00Z,1,\n1970-01-01T00:00:00Z,2,m\n"
    result = read_influx_csv(io.StringIO(text))
    assert errors(result) == [(2, "empty _measurement")]
    assert len(result.batch) == 1


def test_unreadable_csv_row_is_reported_and_reading_goes_on() -> None:
    huge = "x" * (csv.field_size_limit() + 1)
    text = f"_time,_value,src\n1970-01-01T00:00:01Z,1,{huge}\n1970-01-01T00:00:02Z,2,b\n"
    result = read_influx_csv(io.StringIO(text), measurement="m")
    assert [e.line_no for e in result.errors] == [2]
    assert result.errors[0].reason.startswith("unreadable CSV row: field larger than")
    assert [r["src"] for r in rows(result)] == ["b"]
    assert result.lines == 2


def test_empty_file() -> None:
    result = read_influx_csv(io.StringIO(""), measurement="m")
    assert len(result.batch) == 0 and result.errors == [] and result.lines == 0


# --- InfluxDB 2.x annotated CSV -----------------------------------------------------


def test_annotated_csv_tables() -> None:
    result = read_influx_csv(ANNOTATED)
    got = [
        (r["time"], r["measurement"], r["value"], r["src"], r["dst"], r["service"])
        for r in rows(result)
    ]
    src = "demo.riotlocal"
    assert got == [
        (1639383164695359100, "tdmp_bytes_total", 300.0, src, "telenor.se", "dict"),
        (1639383223895385838, "tdmp_bytes_total", 632.5, src, "telenor.se", "dict"),
        # 08:14:43.000000001+01:00 is 07:14:43.000000001Z
        (1639379683000000001, "tdmp_bytes_total", 1000.0, src, "telenor.se", "dict"),
        (1639383480000000000, "tdmp_bytes_created", 4.25, src, "94.234.170.123", "munin"),
        # measurement "prometheus": the field is the name
        (1639383164000000000, "tdmp_packets_total", 17.0, src, "", ""),
        (1639383224000000000, "tdmp_packets_total", 18.0, src, "", ""),
    ]
    assert errors(result) == [
        (8, "non-finite _value NaN"),
        (9, "invalid time '2021-12-13 08:16:00'"),
        (10, "missing _value"),
    ]
    assert result.ignored_fields == 1  # the string-typed table
    assert result.lines == 10
    assert all(e.source == str(ANNOTATED) for e in result.errors)


def test_annotated_defaults_fill_empty_cells() -> None:
    text = (
        "#datatype,string,long,dateTime:RFC3339,double,string,string\r\n"
        "#group,false,false,false,false,true,true\r\n"
        "#default,_result,,,,net,10.0.0.1\r\n"
        ",result,table,_time,_value,_measurement,src\r\n"
        ",,0,2021-12-13T08:12:44Z,1,,\r\n"
        ",,0,2021-12-13T08:12:45Z,2,other,10.0.0.2\r\n"
    )
    result = read_influx_csv(io.StringIO(text, newline=""))
    assert [(r["measurement"], r["src"], r["value"]) for r in rows(result)] == [
        ("net", "10.0.0.1", 1.0),
        ("other", "10.0.0.2", 2.0),
    ]


def test_annotations_of_one_table_do_not_leak_into_the_next() -> None:
    text = (
        "#datatype,string,long,dateTime:RFC3339,string\n"
        ",result,table,_time,_value\n"
        ",,0,2021-12-13T08:12:44Z,hello\n"
        "\n"
        ",result,table,_time,_value\n"
        ",,1,2021-12-13T08:12:44Z,5\n"
    )
    result = read_influx_csv(io.StringIO(text), measurement="m")
    assert result.ignored_fields == 1 and result.errors == []
    assert [r["value"] for r in rows(result)] == [5.0]


# --- RFC 3339 times -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00.000000001Z", 1),
        ("1969-12-31T23:59:59.999999999Z", -1),
        ("2021-12-13T08:13:43.895385838Z", 1639383223895385838),
        ("2021-12-13T08:12:44.6953591Z", 1639383164695359100),
        ("2021-12-13T08:12:44.5z", 1639383164500000000),
        ("2021-12-13t09:12:44+01:00", 1639383164000000000),
        ("2021-12-13T03:42:44-04:30", 1639383164000000000),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),
        ("1677-09-21T00:12:43.145224192Z", -(2**63)),
    ],
)
def test_parse_rfc3339_ns_exact(text: str, ns: int) -> None:
    assert parse_rfc3339_ns(text) == ns


@pytest.mark.parametrize(
    "text",
    [
        "2021-12-13T08:12:44",
        "2021-12-13",
        "2021-02-29T00:00:00Z",
        "2021-12-13T24:00:00Z",
        "2021-12-13T08:12:44.Z",
        "2021-12-13T08:12:44+0100",
        " 2021-12-13T08:12:44Z",
        "2021-12-13T08:12:44Z ",
        "\uff12\uff10\uff12\uff11-12-13T08:12:44Z",  # full-width digits
        "2262-04-11T23:47:16.854775808Z",
    ],
)
def test_parse_rfc3339_ns_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns(text)


@given(
    st.datetimes(min_value=datetime(1700, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(0, 10**9 - 1),
    st.integers(0, 9),
    st.integers(-(23 * 60 + 59), 23 * 60 + 59),
)
def test_parse_rfc3339_ns_matches_integer_arithmetic(
    dt: datetime, ns: int, digits: int, offset_min: int
) -> None:
    frac = f"{ns:09d}"[:digits]
    sign = "+" if offset_min >= 0 else "-"
    zone = f"{sign}{abs(offset_min) // 60:02d}:{abs(offset_min) % 60:02d}"
    text = f"{dt:%Y-%m-%dT%H:%M:%S}{'.' + frac if digits else ''}{zone if offset_min else 'Z'}"
    utc = dt - timedelta(minutes=offset_min)
    expected = calendar.timegm(utc.timetuple()) * 10**9 + int(frac.ljust(9, "0"))
    assert parse_rfc3339_ns(text) == expected
