"""The netsentry command as a user runs it (real subprocesses, real files)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netsentry.store.sqlite import Store

DATA = Path(__file__).parent / "data"


def netsentry(*args: str, stdin: bytes | None = None, db: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETSENTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "netsentry.cli", *args, "--db", str(db)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=300,
    )


def test_demo_replays_the_riot_export_and_reports(tmp_path):
    db = tmp_path / "demo.sqlite"
    result = netsentry("demo", "--no-serve", db=db)
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "RIoT export: 19888 records, 178 entities, 4 measurements" in out
    assert "88 hourly checks, 19888 records" in out
    assert "tdmp_bytes_total:" in out and "z-score anomalies" in out
    assert Store(db).counters()["checks"] == 88


def test_ingest_line_protocol_file_with_bad_lines_keeps_the_good(tmp_path):
    lp = tmp_path / "points.lp"
    lp.write_text("cpu,src=a value=1 1\ncpu,src=a value=x 2\n# comment\ncpu,src=b value=3 3\n")
    db = tmp_path / "s.sqlite"
    result = netsentry("ingest", str(lp), "--check", db=db)
    assert result.returncode == 0
    assert "ingested 2 records, rejected 1 malformed lines" in result.stdout.decode()
    assert f"{lp}:2:" in result.stderr.decode()
    assert "check 1: 2 records" in result.stdout.decode()
    store = Store(db)
    assert store.counters()["errors_ingest"] == 1


def test_ingest_from_stdin_with_precision(tmp_path):
    db = tmp_path / "s.sqlite"
    result = netsentry("ingest", "-", "--precision", "s", stdin=b"cpu,src=a value=1 7\n", db=db)
    assert result.returncode == 0, result.stderr.decode()
    store = Store(db)
    assert store.read_inbox(0, store.inbox_head()).frame["time"].to_list() == [7 * 10**9]


def test_ingest_influx_csv_takes_the_measurement_from_the_file_name(tmp_path):
    src = DATA / "riot_bytes_total_head.csv"
    target = tmp_path / "data_tdmp_bytes_total.csv.gz"
    target.write_bytes(gzip.compress(src.read_bytes()))
    db = tmp_path / "s.sqlite"
    result = netsentry("ingest", str(target), db=db)
    assert result.returncode == 0, result.stderr.decode()
    assert "ingested 199 records" in result.stdout.decode()
    store = Store(db)
    assert set(store.read_inbox(0, store.inbox_head()).measurements()) == {"tdmp_bytes_total"}


def test_ingest_refuses_a_missing_file_and_all_bad_input(tmp_path):
    db = tmp_path / "s.sqlite"
    missing = netsentry("ingest", str(tmp_path / "nope.lp"), db=db)
    assert missing.returncode != 0 and "no such file" in missing.stderr.decode()
    bad = tmp_path / "bad.lp"
    bad.write_text("just garbage\n")
    result = netsentry("ingest", str(bad), db=db)
    assert result.returncode == 1 and "rejected 1" in result.stdout.decode()


def test_config_validates_ranges(tmp_path):
    db = tmp_path / "s.sqlite"
    ok = netsentry("config", "--tolerance", "4", "--frequency", "12", db=db)
    assert json.loads(ok.stdout) == {"tolerance": 4.0, "frequency": 12}
    for flag, value in (("--tolerance", "7"), ("--frequency", "200")):
        bad = netsentry("config", flag, value, db=db)
        assert bad.returncode == 2 and "less than or equal" in bad.stderr.decode()
    assert json.loads(netsentry("config", db=db).stdout)["tolerance"] == 4.0


@pytest.mark.parametrize("bad", ["1", "abc"])
def test_bad_environment_configuration_is_a_clear_error(tmp_path, bad):
    env = {**os.environ, "NETSENTRY_TOLERANCE": bad}
    result = subprocess.run(
        [sys.executable, "-m", "netsentry.cli", "check", "--db", str(tmp_path / "s.sqlite")],
        capture_output=True,
        env=env,
    )
    assert result.returncode == 2 and "invalid configuration" in result.stderr.decode()
    assert "tolerance" in result.stderr.decode()


def test_evaluate_ranks_detectors_and_writes_the_report(tmp_path):
    out = tmp_path / "evaluation"
    result = netsentry("evaluate", "--out", str(out), db=tmp_path / "e.sqlite")
    assert result.returncode == 0, result.stderr.decode()
    report = (out / "report.md").read_text()
    assert "| segment | detector | em | mv |" in report
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "tdmp_bytes_total/" in result.stdout.decode()
    stream = netsentry("evaluate", "--stream", "--out", str(out), db=tmp_path / "e.sqlite")
    assert stream.returncode == 0, stream.stderr.decode()
    text = (out / "stream.md").read_text()
    assert "circular" in text  # no labels: judged against the z-score's verdicts
