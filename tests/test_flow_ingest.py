"""Flows through the service: signals stored, conversations in the inbox, and with a
pseudonymization key no original address is ever written to the store."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

from netsentry.flows import read_zeek
from netsentry.privacy.epochs import Pseudonymizer
from netsentry.service.flow_ingest import ingest_flows
from netsentry.store.sqlite import Store

FLOWS = Path(__file__).parent / "data" / "flows"
HORIZONTAL = FLOWS / "slips-portscan-horizontal.conn.log"
REMCOS = FLOWS / "slips-test18.conn.log.labeled"


def test_scan_raises_a_stored_signal_once(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    report = ingest_flows(store, read_zeek(HORIZONTAL))
    assert report.flows == 41 and report.signals >= 1 and report.records > 0
    with store.read() as db:
        rows = db.execute(
            "SELECT detector, explanation FROM anomalies WHERE measurement = 'conn_flows'"
        ).fetchall()
    assert "signal:fan_out_destinations" in {r[0] for r in rows}
    ingest_flows(store, read_zeek(HORIZONTAL))  # the same file again
    with store.read() as db:
        (count,) = db.execute("SELECT COUNT(*) FROM anomalies").fetchone()
    assert count == len(rows)
    assert store.counters()["flows_ingested"] == 82


def original_addresses(path: Path) -> set[str]:
    return set(re.findall(rb"\b(?:\d{1,3}\.){3}\d{1,3}\b", path.read_bytes())) - {b"0.0.0.0"}


def test_pseudonymized_store_holds_no_original_address(tmp_path):
    master = secrets.token_bytes(32)
    store = Store(tmp_path / "p.sqlite")
    report = ingest_flows(store, read_zeek(REMCOS), pseudonymizer=Pseudonymizer(master, "day"))
    assert report.records > 0
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    leaked = {a for a in original_addresses(REMCOS) if a in stored}
    assert not leaked, leaked
    with store.read() as db:
        (epochs,) = db.execute("SELECT COUNT(*) FROM pseudonym_epochs").fetchone()
        (entities,) = db.execute("SELECT COUNT(*) FROM entities").fetchone()
    assert epochs == entities > 0


def test_the_key_holder_reverses_an_entity_from_the_cli(tmp_path):
    key = secrets.token_hex(32)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("NETSENTRY_")},
        "NETSENTRY_PSEUDONYM_KEY": key,
    }
    db = tmp_path / "p.sqlite"
    run = [sys.executable, "-m", "netsentry.cli"]
    ingested = subprocess.run(
        [*run, "ingest", str(REMCOS), "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ingested.returncode == 0 and "pseudonymized" in ingested.stdout, ingested.stderr
    store = Store(db)
    with store.read() as conn:
        signed, src, dst = conn.execute(
            "SELECT e.key, e.src, e.dst FROM entities e JOIN pseudonym_epochs p ON p.key = e.key "
            "LIMIT 1"
        ).fetchone()
    key_text = f"{signed & (2**64 - 1):016x}"
    back = subprocess.run(
        [*run, "depseudonymize", "--key", key_text, "--db", str(db)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert back.returncode == 0, back.stderr
    originals = re.findall(r"-> ([^\s,]+)", back.stdout)
    assert len(originals) == 2 and all(o.encode() in REMCOS.read_bytes() for o in originals)
    assert src not in originals and dst not in originals
    wrong = {**env, "NETSENTRY_PSEUDONYM_KEY": secrets.token_hex(32)}
    refused = subprocess.run(
        [*run, "depseudonymize", "--key", key_text, "--db", str(db)],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "another master secret" in refused.stderr
