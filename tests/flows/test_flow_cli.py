"""The flow commands as a user runs them: a capture into the store with the Parquet and
Redis sinks, and the NetFlow collector fed by a real softflowd."""

from __future__ import annotations

import lzma
import os
import subprocess
import sys
import time

from flowdata import DATA
from test_netflow import replay

from netsentry.store.parquet import ParquetStore
from netsentry.store.redis_streams import FlowStreams
from netsentry.store.sqlite import Store
from redis_server import client, redis_server
from servers import free_port

PCAP = DATA.parent / "pcap" / "iot23-honeypot-4-1.pcap.xz"
NETSENTRY = [sys.executable, "-m", "netsentry.cli"]


def environment(**values: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NETSENTRY_")}
    return {**clean, **{f"NETSENTRY_{k.upper()}": v for k, v in values.items()}}


def test_a_capture_lands_in_the_store_parquet_and_redis(tmp_path):
    server, port = redis_server(tmp_path)
    server.start()
    try:
        env = environment(
            redis_url=f"redis://127.0.0.1:{port}/0", parquet_dir=str(tmp_path / "parquet")
        )
        db = tmp_path / "s.sqlite"
        done = subprocess.run(
            [*NETSENTRY, "ingest", str(PCAP), "--db", str(db)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        flows = int(done.stdout.split(" flows")[0].rsplit(" ", 1)[1])
        assert flows > 400
        stored = ParquetStore(tmp_path / "parquet").flows(0, 2**62)
        assert stored.frame.height == flows
        streams = FlowStreams(client(port))
        assert len(streams.conversations()) > 0
        assert Store(db).counters()["flows_ingested"] == flows
    finally:
        server.stop()


def test_collect_ingests_what_softflowd_exports(tmp_path):
    plain = tmp_path / "capture.pcap"
    plain.write_bytes(lzma.decompress(PCAP.read_bytes()))
    port, db = free_port(), tmp_path / "c.sqlite"
    collector = subprocess.Popen(
        [
            *NETSENTRY,
            "collect",
            "--listen",
            f"127.0.0.1:{port}",
            "--idle-timeout",
            "3",
            "--every",
            "0.5",
            "--db",
            str(db),
        ],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while "collecting" not in (collector.stdout.readline() if collector.stdout else ""):
            assert time.monotonic() < deadline, "collector did not start"
        replay(plain, 9, port)
        out, err = collector.communicate(timeout=60)
    finally:
        if collector.poll() is None:
            collector.kill()
    assert collector.returncode == 0, err
    assert "collector stopped" in out
    flows = Store(db).counters()["flows_ingested"]
    assert flows > 400  # v9 records: one per direction of the capture's flows
