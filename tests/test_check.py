"""The periodic check end to end on the real RIoT export, and its atomicity."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from netsentry.config import DetectionSettings
from netsentry.service.check import INBOX, run_check
from netsentry.service.replay import hourly, riot_export
from netsentry.service.runtime import effective
from netsentry.store.sqlite import ConcurrentUpdateError, Store, decode_state

SETTINGS = DetectionSettings()


@pytest.fixture(scope="module")
def riot():
    return riot_export()


def hours(riot, n):
    return [chunk for _, chunk in list(hourly(riot))[:n]]


def dump(store: Store) -> dict:
    """Everything a check decides, comparable across two stores."""
    with store.read() as db:
        states = {
            (c, m): {k: np.asarray(v).tolist() for k, v in decode_state(blob).items()}
            for c, m, blob in db.execute("SELECT component, measurement, blob FROM state")
        }
        anomalies = db.execute(
            "SELECT id, time, measurement, key, value, score, threshold, detector, explanation, "
            "status FROM anomalies ORDER BY id"
        ).fetchall()
        checkpoints = db.execute("SELECT source, watermark FROM checkpoints").fetchall()
    counters = {k: v for k, v in store.counters().items() if k != "check_seconds"}
    return {
        "states": states,
        "anomalies": anomalies,
        "checkpoints": checkpoints,
        "counters": counters,
    }


def test_riot_replay_flags_with_explanations(tmp_path, riot):
    store = Store(tmp_path / "s.sqlite")
    reports = []
    for chunk in hours(riot, 40):
        store.append(chunk)
        reports.append(run_check(store, SETTINGS))
    assert sum(r.records for r in reports) == sum(len(c) for c in hours(riot, 40))
    assert store.watermark(INBOX) == store.inbox_head()
    with store.read() as db:
        rows = db.execute(
            "SELECT detector, value, score, threshold, explanation FROM anomalies "
            "WHERE detector = 'zscore'"
        ).fetchall()
        components = {r[0] for r in db.execute("SELECT component FROM state")}
    assert components == {"zscore", "changepoint", "counter", "created"}
    assert rows, "the RIoT export has counter bursts that the z-score flags"
    for _, value, score, threshold, explanation in rows:
        e = json.loads(explanation)
        assert e["n"] >= SETTINGS.min_count and e["tolerance"] == threshold == 3.0
        if e["z"] is None:  # zero-variance baseline: any change is infinite z
            assert e["std"] == 0 and value != e["mean"] and score is None
        else:
            assert abs((value - e["mean"]) / e["std"] - e["z"]) < 1e-9 and score > 3.0
    assert all(r.records == 0 or r.duration_s < 5 for r in reports)


def test_empty_check_is_recorded(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    report = run_check(store, SETTINGS)
    assert report.records == 0 and report.anomalies == 0 and report.check_id == 1
    assert store.counters()["checks"] == 1


def test_failure_at_commit_leaves_no_trace_and_rerun_matches(tmp_path, riot):
    clean, faulty = Store(tmp_path / "clean.sqlite"), Store(tmp_path / "faulty.sqlite")
    for chunk in hours(riot, 14):
        clean.append(chunk)
        run_check(clean, SETTINGS)
        faulty.append(chunk)
        before = dump(faulty)
        with faulty.read() as db:  # fail the last statement of the check's transaction
            db.execute(
                "CREATE TRIGGER fail BEFORE INSERT ON checkpoints "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
            db.execute(
                "CREATE TRIGGER fail2 BEFORE UPDATE ON checkpoints "
                "BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
            )
        with pytest.raises(sqlite3.IntegrityError, match="injected fault"):
            run_check(faulty, SETTINGS)
        assert dump(faulty) == before
        with faulty.read() as db:
            db.execute("DROP TRIGGER fail")
            db.execute("DROP TRIGGER fail2")
        run_check(faulty, SETTINGS)
    assert dump(faulty) == dump(clean)


def test_killed_check_process_reruns_to_the_same_state(tmp_path, riot):
    data = hours(riot, 60)
    clean, killed = Store(tmp_path / "clean.sqlite"), Store(tmp_path / "killed.sqlite")
    for store in (clean, killed):
        for chunk in data[:30]:
            store.append(chunk)
            run_check(store, SETTINGS)
        for chunk in data[30:]:
            store.append(chunk)
    run_check(clean, SETTINGS)
    command = [sys.executable, "-m", "netsentry.cli", "check", "--db", str(killed.path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    outcomes = []
    for delay in (0.3, 0.6, 0.9, 1.2, 1.5, 1.8):
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        outcomes.append(killed.watermark(INBOX) == killed.inbox_head())
        if outcomes[-1]:
            break
    if not outcomes[-1]:
        subprocess.run(command, env=env, check=True, capture_output=True)
    assert dump(killed) == dump(clean)


def test_runtime_tolerance_takes_effect_at_next_check(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert effective(SETTINGS, store).tolerance == 3.0
    store.set_settings({"tolerance": 5.5, "frequency": 2}, actor="test")
    current = effective(SETTINGS, store)
    assert (current.tolerance, current.frequency) == (5.5, 2)
    assert run_check(store, current).tolerance == 5.5
    with store.read() as db:
        history = db.execute("SELECT name, value, actor FROM settings_history").fetchall()
    assert ("tolerance", "5.5", "test") in history


def test_commit_over_a_replaced_state_is_refused(tmp_path, riot):
    store = Store(tmp_path / "s.sqlite")
    store.append(hours(riot, 1)[0])
    run_check(store, SETTINGS)
    state, version = store.load_state("zscore", "tdmp_bytes_total")
    with store.transaction() as tx:
        tx.save_state("zscore", "tdmp_bytes_total", state)
    with pytest.raises(ConcurrentUpdateError), store.transaction() as tx:
        tx.expect_versions({("zscore", "tdmp_bytes_total"): version})
