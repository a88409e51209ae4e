"""InfluxDB line protocol parser: syntax, field mapping, errors, streaming, round trips."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client import Point

from netsentry.ingest.errors import LineError, ParseResult
from netsentry.ingest.lineprotocol import (
    PRECISIONS,
    _Builder,
    _fast_line,
    _RejectError,
    _slow_line,
    field_measurement,
    iter_line_chunks,
    parse_lines,
)
from netsentry.keys import entity_key
from netsentry.model import KEY_TAGS

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def rows(result: ParseResult) -> list[dict[str, Any]]:
    """Rows as dicts without the key column, in order."""
    return [
        {k: v for k, v in row.items() if k != "key"}
        for row in result.batch.frame.iter_rows(named=True)
    ]


def one(line: str | bytes, **kwargs: Any) -> dict[str, Any]:
    result = parse_lines(line, **kwargs)
    assert result.errors == [], result.errors
    (row,) = rows(result)
    return row


def reasons(data: str, **kwargs: Any) -> list[tuple[int, str]]:
    result = parse_lines(data, **kwargs)
    return [(e.line_no, e.reason) for e in result.errors]


# --- basic syntax ------------------------------------------------------------------


def test_simple_line_gives_one_row_with_key_tags() -> None:
    line = "tdmp_bytes_total,src=10.0.0.1,dst=10.0.0.2,service=http value=123 1639069200000000000"
    result = parse_lines(line)
    assert result.errors == [] and result.lines == 1 and result.ignored_fields == 0
    frame = result.batch.frame
    assert frame.height == 1
    row = frame.row(0, named=True)
    assert row["time"] == 1639069200000000000
    assert row["measurement"] == "tdmp_bytes_total"
    assert row["value"] == 123.0
    tags = {"src": "10.0.0.1", "dst": "10.0.0.2", "service": "http"}
    assert {t: row[t] for t in KEY_TAGS} == {t: tags.get(t, "") for t in KEY_TAGS}
    assert row["key"] == entity_key(tags)


def test_tags_outside_key_tags_are_dropped() -> None:
    row = one("m,host=h1,src=a,zone=eu value=1 5")
    assert row["src"] == "a"
    assert "host" not in row and "zone" not in row
    result = parse_lines("m,host=h1,src=a value=1 5")
    assert result.batch.frame["key"][0] == entity_key({"src": "a"})


def test_escapes_in_measurement_tags_and_field_keys() -> None:
    row = one(r"my\ meas\,x,src=a\ b\,c\=d,dst=x\=y value=1 1")
    assert row["measurement"] == "my meas,x"
    assert row["src"] == "a b,c=d"
    assert row["dst"] == "x=y"
    # in measurements '=' needs no escape and "\=" is kept as is
    assert one(r"a=b\=c value=1 1")["measurement"] == r"a=b\=c"
    # field keys: ',', '=' and ' ' are escaped
    assert one(r"m my\ f\,g\=h=2 1")["measurement"] == "m_my f,g=h"


def test_other_backslashes_are_literal() -> None:
    row = one(r"m\x,src=C:\path\to,dst=a\\b value=1 1")
    assert row["measurement"] == r"m\x"
    assert row["src"] == r"C:\path\to"
    assert row["dst"] == r"a\\b"
    # a backslash before a backslash is literal, so "\\," is a backslash + escaped comma
    assert one(r"m,src=a\\,b value=1 1")["src"] == "a\\,b"


def test_unicode_is_kept() -> None:
    row = one("mésure,src=🍭,dst=東京 value=1.25 1")
    assert (row["measurement"], row["src"], row["dst"]) == ("mésure", "🍭", "東京")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        ("-1.5", -1.5),
        ("1e3", 1000.0),
        ("1E-2", 0.01),
        ("-2.5e+3", -2500.0),
        (".5", 0.5),
        ("1.", 1.0),
        ("12i", 12.0),
        ("-12i", -12.0),
        ("12u", 12.0),
        ("0u", 0.0),
        ("9223372036854775807i", float(INT64_MAX)),
        ("-9223372036854775808i", float(INT64_MIN)),
        ("18446744073709551615u", float(2**64 - 1)),
    ],
)
def test_numeric_field_types(text: str, expected: float) -> None:
    assert one(f"m value={text} 1")["value"] == expected


@pytest.mark.parametrize(
    "text", ["t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"]
)
def test_booleans_are_ignored_and_counted(text: str) -> None:
    result = parse_lines(f"m b={text},value=3 1")
    assert result.errors == [] and result.ignored_fields == 1
    assert rows(result)[0]["value"] == 3.0


def test_string_fields_with_escapes_are_ignored_and_counted() -> None:
    line = r'm,src=a s="a, b=c \"quoted\" \\",value=7,t="x y" 9'
    result = parse_lines(line)
    assert result.errors == []
    assert result.ignored_fields == 2
    assert [(r["measurement"], r["value"], r["time"]) for r in rows(result)] == [("m", 7.0, 9)]


def test_line_with_only_string_fields_is_not_an_error() -> None:
    result = parse_lines('m s="x",b=true 1')
    assert result.errors == [] and len(result.batch) == 0
    assert result.lines == 1 and result.ignored_fields == 2


def test_string_value_may_span_lines() -> None:
    data = 'm s="line one\nline two, \\"still\\" string",value=2 5\nm value=3 6'
    result = parse_lines(data)
    assert result.errors == []
    assert [(r["value"], r["time"]) for r in rows(result)] == [(2.0, 5), (3.0, 6)]


def test_multiple_fields_and_field_mapping() -> None:
    result = parse_lines("net,src=a rx=1,tx=2i,value=3,counter=4,gauge=5,untyped=6 10")
    assert result.errors == []
    got = [(r["measurement"], r["value"]) for r in rows(result)]
    assert got == [
        ("net_rx", 1.0),
        ("net_tx", 2.0),
        ("net", 3.0),
        ("net", 4.0),
        ("net", 5.0),
        ("net", 6.0),
    ]
    assert {r["src"] for r in rows(result)} == {"a"}


def test_prometheus_v2_measurement_uses_field_key() -> None:
    result = parse_lines("prometheus,src=a http_requests_total=5,go_gc_seconds=0.5 10")
    assert [(r["measurement"], r["value"]) for r in rows(result)] == [
        ("http_requests_total", 5.0),
        ("go_gc_seconds", 0.5),
    ]


def test_field_measurement_rules() -> None:
    assert field_measurement("m", "value") == "m"
    assert field_measurement("m", "counter") == "m"
    assert field_measurement("m", "gauge") == "m"
    assert field_measurement("m", "untyped") == "m"
    assert field_measurement("prometheus", "x_total") == "x_total"
    assert field_measurement("m", "rx") == "m_rx"


# --- timestamps and precision ---------------------------------------------------------


@pytest.mark.parametrize(
    ("precision", "factor"),
    [
        ("n", 1),
        ("ns", 1),
        ("u", 1_000),
        ("us", 1_000),
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ],
)
def test_precisions_scale_to_ns(precision: str, factor: int) -> None:
    assert PRECISIONS[precision] == factor
    assert one("m value=1 1639069", precision=precision)["time"] == 1639069 * factor
    assert one("m value=1 -3", precision=precision)["time"] == -3 * factor


@pytest.mark.parametrize("precision", ["", "sec", "S", "mu", "d", "µs"])
def test_unknown_precision_raises(precision: str) -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        parse_lines("m value=1 1", precision=precision)


def test_missing_timestamp_uses_now_ns() -> None:
    assert one("m value=1", now_ns=1_234_567_891_234)["time"] == 1_234_567_891_234
    # InfluxDB truncates the server time to the write precision
    assert one("m value=1", now_ns=1_234_567_891_234, precision="s")["time"] == 1_234_000_000_000
    assert one("m value=1   ", now_ns=42)["time"] == 42
    before = time.time_ns()
    t = one("m value=1")["time"]
    assert isinstance(t, int) and before <= t <= time.time_ns()


def test_timestamp_range() -> None:
    assert one(f"m value=1 {INT64_MAX}")["time"] == INT64_MAX
    assert one(f"m value=1 {INT64_MIN}")["time"] == INT64_MIN
    assert one("m value=1 9223372036", precision="s")["time"] == 9223372036 * 10**9
    assert reasons(f"m value=1 {INT64_MAX + 1}") == [
        (1, f"timestamp {INT64_MAX + 1} out of range (int64 nanoseconds)")
    ]
    assert reasons("m value=1 9223372037", precision="s") == [
        (1, "timestamp 9223372037 out of range (int64 nanoseconds)")
    ]
    assert reasons("m value=1 -153722868", precision="m") == [
        (1, "timestamp -153722868 out of range (int64 nanoseconds)")
    ]


# --- layout: comments, blank lines, whitespace, CRLF --------------------------------


def test_comments_blank_lines_whitespace_and_crlf() -> None:
    data = (
        "# a comment\r\n"
        "\r\n"
        "   \t \r\n"
        "  # indented comment\r\n"
        "m,src=a value=1 1\r\n"
        "  m,src=b   value=2   2  \r\n"
        "\tm,src=c value=3\t\r\n"
        'm,src=d s="x\r",value=4 4\r\n'
    )
    result = parse_lines(data, now_ns=3)
    assert result.errors == []
    assert result.lines == 4
    assert [(r["src"], r["value"], r["time"]) for r in rows(result)] == [
        ("a", 1.0, 1),
        ("b", 2.0, 2),
        ("c", 3.0, 3),
        ("d", 4.0, 4),
    ]


def test_empty_input() -> None:
    for data in ("", b"", [], "\n\n# only comments\n"):
        result = parse_lines(data)
        assert len(result.batch) == 0 and result.errors == [] and result.lines == 0
        assert result.batch.frame.columns == ["time", "measurement", "value", "key", *KEY_TAGS]


def test_bytes_input_bom_and_invalid_utf8() -> None:
    assert one("\ufeffm value=1 1".encode())["measurement"] == "m"
    data = b"m,src=ok value=1 1\nm,src=\xff\xfe value=2 2\r\nm value=3 3\n"
    result = parse_lines(b"\xef\xbb\xbf" + data, source="upload")
    assert [(r["src"], r["value"]) for r in rows(result)] == [("ok", 1.0), ("", 3.0)]
    assert [(e.line_no, e.reason) for e in result.errors] == [(2, "invalid UTF-8")]
    assert "\ufffd" in result.errors[0].line
    assert result.lines == 3


def test_lone_surrogates_in_str_input_are_rejected() -> None:
    result = parse_lines("m,src=\udcff value=1 1\nm value=2 2")
    assert [(e.line_no, e.reason) for e in result.errors] == [(1, "invalid UTF-8")]
    assert [r["value"] for r in rows(result)] == [2.0]


# --- errors -------------------------------------------------------------------------

BAD_LINES = [
    ("m", "missing field set"),
    ("m,src=a", "missing field set"),
    ("m,src=a   ", "missing field set"),
    ("m value=abc 1", "invalid field value 'abc' for field 'value'"),
    ("m x=1.2.3 1", "invalid field value '1.2.3' for field 'x'"),
    ("m x=+1 1", "invalid field value '+1' for field 'x'"),
    ("m x=1_000 1", "invalid field value '1_000' for field 'x'"),
    ("m x=0x10 1", "invalid field value '0x10' for field 'x'"),
    ("m x=yes 1", "invalid field value 'yes' for field 'x'"),
    ("m x=-1u 1", "invalid field value '-1u' for field 'x'"),
    ("m x=1.5i 1", "invalid field value '1.5i' for field 'x'"),
    ("m x=a=b 1", "invalid field value 'a=b' for field 'x'"),
    ('m x=1" 1', "invalid field value '1\"' for field 'x'"),
    ("m x= 1", "missing value for field 'x'"),
    ("m x=,y=1 1", "missing value for field 'x'"),
    ('m s="abc 1', "unterminated string for field 's'"),
    ('m value=1,s="abc\\" 1', "unterminated string for field 's'"),
    ('m s="a"b 1', "unexpected text after string value of field 's'"),
    ("m value=1 12x", "invalid timestamp '12x'"),
    ("m value=1 1.5", "invalid timestamp '1.5'"),
    ("m value=1 +5", "invalid timestamp '+5'"),
    ("m value=1 1 2", "unexpected text after timestamp"),
    ("m value=nan 1", "non-finite value nan for field 'value'"),
    ("m x=NaN 1", "non-finite value NaN for field 'x'"),
    ("m x=inf 1", "non-finite value inf for field 'x'"),
    ("m x=-Inf 1", "non-finite value -Inf for field 'x'"),
    ("m x=+infinity 1", "non-finite value +infinity for field 'x'"),
    ("m x=1e999 1", "non-finite value 1e999 for field 'x'"),
    ("m x=9223372036854775808i 1", "integer 9223372036854775808i out of int64 range for field 'x'"),
    (
        "m x=-9223372036854775809i 1",
        "integer -9223372036854775809i out of int64 range for field 'x'",
    ),
    (
        "m x=18446744073709551616u 1",
        "unsigned integer 18446744073709551616u out of uint64 range for field 'x'",
    ),
    ("m,src=a,src=b value=1", "duplicate tag 'src'"),
    ("m,host=a,host=a value=1", "duplicate tag 'host'"),
    ("m x=1,x=2 1", "duplicate field 'x'"),
    (",src=a value=1 1", "empty measurement"),
    ("m,=a value=1 1", "missing tag key"),
    ("m,src= value=1 1", "missing value for tag 'src'"),
    ("m,src value=1 1", "missing '=' in tag 'src'"),
    ("m, value=1 1", "missing '=' in tag ''"),
    ("m,src=a=b value=1 1", "unescaped '=' in value of tag 'src'"),
    ("m =1 1", "missing field key"),
    ("m value 1", "missing '=' in field 'value'"),
    ("m value=1, 1", "missing '=' in field ''"),
    (r"m,src=a\ b", "missing field set"),
    (r"m\ x,src=a\=b x=nan", "non-finite value nan for field 'x'"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_error_reasons(line: str, reason: str) -> None:
    result = parse_lines(line, now_ns=0)
    assert [(e.line_no, e.reason) for e in result.errors] == [(1, reason)]
    assert result.errors[0].line == line
    assert len(result.batch) == 0 and result.lines == 1


def test_good_lines_are_kept_next_to_bad_ones_with_line_numbers() -> None:
    good = [f"m,src=s{i} value={i} {i}" for i in range(len(BAD_LINES) + 1)]
    lines = ["# header comment", ""]
    for g, (bad, _) in zip(good, [*BAD_LINES, ("", "")], strict=True):
        lines += [g, bad] if bad else [g]
    result = parse_lines("\r\n".join(lines), source="f.lp", first_line_no=10, now_ns=0)
    expected = [(10 + 3 + 2 * i, reason) for i, (_, reason) in enumerate(BAD_LINES)]
    assert [(e.line_no, e.reason) for e in result.errors] == expected
    assert all(e.source == "f.lp" for e in result.errors)
    assert [r["value"] for r in rows(result)] == [float(i) for i in range(len(good))]
    assert result.lines == len(good) + len(BAD_LINES)


def test_a_bad_field_rejects_the_whole_line() -> None:
    result = parse_lines("m a=1,b=x,c=3 1\nm a=2 2")
    assert [r["value"] for r in rows(result)] == [2.0]
    assert result.errors[0].reason == "invalid field value 'x' for field 'b'"


def test_unterminated_string_does_not_swallow_following_lines() -> None:
    data = 'm s="abc\nm value=1 1\nm s="x" 2\nm value=3 3'
    result = parse_lines(data)
    assert [(e.line_no, e.reason) for e in result.errors] == [
        (1, "unterminated string for field 's'")
    ]
    assert [r["value"] for r in rows(result)] == [1.0, 3.0]


def test_line_error_format_and_truncation() -> None:
    long_line = "m value=1 1 " + "x" * 300
    (err,) = parse_lines(f"m value=1 1\n{long_line}", source="stdin").errors
    assert err == LineError("stdin", 2, "unexpected text after timestamp", long_line[:200])
    assert str(err) == f"stdin:2: unexpected text after timestamp: {long_line[:200]!r}"


# --- streaming ----------------------------------------------------------------------


def _sample(n: int) -> str:
    out = []
    for i in range(n):
        out.append(f"m,src=h{i % 7} value={i} {i}" if i % 5 else f"m,src=h{i} value=bad {i}")
    return "\n".join(out) + "\n"


@pytest.mark.parametrize("chunk_lines", [1, 3, 10, 1000])
def test_iter_line_chunks_binary_and_text(chunk_lines: int) -> None:
    text = _sample(23).replace("\n", "\r\n", 3)
    whole = parse_lines(text)
    for stream in (io.BytesIO(text.encode()), io.StringIO(text, newline="\n")):
        chunks = list(iter_line_chunks(stream, chunk_lines=chunk_lines))
        assert [len(c) for _, c in chunks][:-1] == [chunk_lines] * (len(chunks) - 1)
        assert sum(len(c) for _, c in chunks) == 23
        errors, values = [], []
        for first, lines in chunks:
            result = parse_lines(lines, first_line_no=first)
            errors += [(e.line_no, e.reason) for e in result.errors]
            values += [r["value"] for r in rows(result)]
        assert errors == [(e.line_no, e.reason) for e in whole.errors]
        assert values == [r["value"] for r in rows(whole)]
        assert [e[0] for e in errors] == [1, 6, 11, 16, 21]


def test_iter_line_chunks_invalid_utf8_and_bom() -> None:
    stream = io.BytesIO(b"\xef\xbb\xbfm value=1 1\nm,src=\xc3 value=2 2\nm value=3 3")
    ((first, lines),) = list(iter_line_chunks(stream))
    result = parse_lines(lines, first_line_no=first)
    assert [r["value"] for r in rows(result)] == [1.0, 3.0]
    assert [(e.line_no, e.reason) for e in result.errors] == [(2, "invalid UTF-8")]
    with pytest.raises(ValueError):
        list(iter_line_chunks(io.BytesIO(b""), chunk_lines=0))


# --- property tests -----------------------------------------------------------------

_SPECIAL = st.sampled_from([*",= \"\\'#", "\\,", "\\ ", "\\=", "\\\\"])
_CHARS = st.characters(exclude_categories=("Cs", "Cc"))
_NAME = (
    st.lists(st.one_of(_SPECIAL, _CHARS), min_size=1, max_size=8)
    .map("".join)
    .filter(lambda s: not s.endswith("\\"))
)
_MEASUREMENT = _NAME.filter(lambda s: not s.startswith("#"))
_STRING = st.lists(st.one_of(_SPECIAL, _CHARS, st.just("\n")), max_size=10).map("".join)
_INT = st.integers(INT64_MIN, INT64_MAX)
_UINT = st.integers(0, 2**64 - 1)
_FIELD_VALUE = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.tuples(st.just("i"), _INT),
    st.tuples(st.just("u"), _UINT),
    st.booleans(),
    _STRING,
)
_POINT = st.fixed_dictionaries(
    {
        "measurement": st.one_of(_MEASUREMENT, st.just("prometheus")),
        "tags": st.dictionaries(st.sampled_from(KEY_TAGS), _NAME, max_size=7),
        "extra": st.dictionaries(_NAME.filter(lambda s: s not in KEY_TAGS), _NAME, max_size=2),
        "fields": st.dictionaries(
            st.one_of(_NAME, st.sampled_from(["value", "counter", "gauge"])),
            _FIELD_VALUE,
            min_size=1,
            max_size=4,
        ),
        "time": _INT,
    }
)


def _escape(text: str, specials: str) -> str:
    return "".join("\\" + c if c in specials else c for c in text)


def _serialize(p: dict[str, Any]) -> str:
    """Our own small line protocol writer."""
    out = [_escape(p["measurement"], ", ")]
    for k, v in sorted({**p["extra"], **p["tags"]}.items()):
        out.append(f",{_escape(k, ',= ')}={_escape(v, ',= ')}")
    fields = []
    for k, v in p["fields"].items():
        if isinstance(v, bool):
            text = "true" if v else "FALSE"
        elif isinstance(v, float):
            text = repr(v)
        elif isinstance(v, tuple):
            text = f"{v[1]}{v[0]}"
        else:
            text = '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        fields.append(f"{_escape(k, ',= ')}={text}")
    return f"{''.join(out)} {','.join(fields)} {p['time']}"


def _with_point(p: dict[str, Any]) -> str:
    """The same point written by the official InfluxDB client."""
    fields = {k: v[1] if isinstance(v, tuple) else v for k, v in p["fields"].items()}
    types = {k: "uint" for k, v in p["fields"].items() if isinstance(v, tuple) and v[0] == "u"}
    point = Point.from_dict(
        {
            "measurement": p["measurement"],
            "tags": {**p["extra"], **p["tags"]},
            "fields": fields,
            "time": p["time"],
        },
        write_precision="ns",
        field_types=types,
    )
    return str(point.to_line_protocol())


def _expected(p: dict[str, Any]) -> tuple[list[tuple[str, float]], int]:
    numeric, ignored = [], 0
    for k, v in p["fields"].items():
        if isinstance(v, bool | str):
            ignored += 1
        else:
            value = float(v[1]) if isinstance(v, tuple) else v
            numeric.append((field_measurement(p["measurement"], k), value))
    return numeric, ignored


def _check_round_trip(p: dict, line: str) -> None:
    result = parse_lines(f"# generated\n{line}\n", now_ns=0)
    assert result.errors == [], (line, result.errors)
    numeric, ignored = _expected(p)
    assert result.ignored_fields == ignored
    got = rows(result)
    assert sorted((r["measurement"], r["value"]) for r in got) == sorted(numeric)
    for r in got:
        assert r["time"] == p["time"]
        assert {t: r[t] for t in KEY_TAGS} == {t: p["tags"].get(t, "") for t in KEY_TAGS}
    if got:
        assert set(result.batch.frame["key"]) == {entity_key(p["tags"])}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_POINT)
def test_round_trip_own_serializer(p: dict[str, Any]) -> None:
    _check_round_trip(p, _serialize(p))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_POINT)
def test_round_trip_influxdb_client_point(p: dict[str, Any]) -> None:
    _check_round_trip(p, _with_point(p))


@settings(max_examples=200, deadline=None)
@given(st.lists(_POINT, min_size=1, max_size=5), st.sampled_from(sorted(PRECISIONS)))
def test_round_trip_many_lines_with_precision(points: list[dict[str, Any]], precision: str) -> None:
    mult = PRECISIONS[precision]
    for p in points:
        p["time"] = abs(p["time"]) // mult * (1 if p["time"] >= 0 else -1)  # stays in range
    data = "\n".join(_serialize(p) for p in points)
    result = parse_lines(data, precision=precision)
    assert result.errors == []
    expected_times = sorted(p["time"] * mult for p in points for _ in _expected(p)[0])
    assert sorted(result.batch.frame["time"]) == expected_times


_PLAIN = st.text(st.sampled_from(list("ab=, 01.-eiu#ntf\t")), max_size=24)


@settings(max_examples=500, deadline=None)
@given(_PLAIN)
def test_fast_and_slow_paths_agree(line: str) -> None:
    line = line.strip(" \t\r")
    if not line or line.startswith("#"):
        return
    outcomes = []
    for parse in (_fast_line, _slow_line):
        b = _Builder()
        try:
            ignored = parse(b, line, 1, 7)
            outcomes.append((ignored, b.times, b.values, b.sids, list(b.series)))
        except _RejectError as exc:
            outcomes.append(str(exc))
    assert outcomes[0] == outcomes[1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_SPECIAL, _CHARS, st.sampled_from([*"\n\r\t\x00"]))).map("".join))
def test_arbitrary_text_never_raises(data: str) -> None:
    result = parse_lines(data, now_ns=0)
    assert len(result.errors) <= result.lines
    assert result.batch.frame["value"].is_finite().all()
