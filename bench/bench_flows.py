"""Lines per second of flow ingest, beside plain ``json.loads`` / ``csv`` loops.

The inputs are the real files of ``shared/data`` replayed from memory until they reach
``--lines`` lines (1M by default): the Slips test6 EVE file (5,000 lines, 3,512 flow
events), and the TSV conn.logs (Stratosphere 001/010/011, IoT-23 4-1/5-1 with their
three-space labels, Slips test18 and the horizontal scan), whole files one after the
other, headers included. Each side reads the same stream:

* EVE: ``read_eve`` into Flows, beside a plain loop that ``json.loads`` every line and
  keeps the flow events' tuple, counts and times (as strings) in lists;
* conn.log: ``read_zeek`` into Flows, beside a plain ``csv.reader`` loop (tab
  separated, ``#`` lines skipped) that keeps the same fields as strings;
* then the same parse feeding ``ConversationSeries`` (1 h intervals), into Batches.
  The replay repeats the files' times, so every round would be late for the one
  before; the lateness is set to 100 years to aggregate them all (at ``flush``).

Best of ``--repeats`` runs for each.

    .venv/bin/python bench/bench_flows.py             # 1M lines of each
    .venv/bin/python bench/bench_flows.py --lines 200000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

from netsentry.flows.conversations import ConversationSeries
from netsentry.flows.schema import FlowReport
from netsentry.flows.suricata import read_eve
from netsentry.flows.zeek import read_zeek
from timing import best_of

REPLAY_LATENESS_S = 100 * 365 * 86400.0
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
EVE = [DATA / "suricata" / "eve-slips-test6.json"]
ZEEK = [
    DATA / "zeek" / name
    for name in (
        "stratosphere-001/labeled-conn.log",
        "stratosphere-010/conn.log.labeled",
        "stratosphere-011/conn.log.labeled",
        "iot23-honeypot-4-1/conn.log.labeled",
        "iot23-honeypot-5-1/conn.log.labeled",
        "slips-test18/conn.log.labeled",
        "slips-portscan-horizontal/conn.log",
    )
]


class Replay(io.RawIOBase):
    """A read-only stream of ``data`` repeated ``times`` times, served from memory."""

    def __init__(self, data: bytes, times: int) -> None:
        self.view, self.times, self.pos, self.round = memoryview(data), times, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self.round == self.times:
            return 0
        n = min(len(buffer), len(self.view) - self.pos)
        buffer[:n] = self.view[self.pos : self.pos + n]
        self.pos += n
        if self.pos == len(self.view):
            self.pos, self.round = 0, self.round + 1
        return n


def replay(paths: list[Path], lines: int) -> tuple[Callable[[], io.BufferedReader], int]:
    """A factory of fresh streams of at least ``lines`` lines, and their line count."""
    data = b"".join(p.read_bytes() for p in paths)
    times = -(-lines // data.count(b"\n"))
    return lambda: io.BufferedReader(Replay(data, times), 1 << 20), times * data.count(b"\n")


def plain_eve(stream: io.BufferedReader) -> int:
    cols: list[list[object]] = [[] for _ in range(10)]
    for line in stream:
        d = json.loads(line)
        if d.get("event_type") != "flow":
            continue
        f = d["flow"]
        for col, value in zip(
            cols,
            (
                f["start"],
                f["end"],
                d["src_ip"],
                d["dest_ip"],
                d.get("src_port"),
                d.get("dest_port"),
                d["proto"],
                f["bytes_toserver"],
                f["bytes_toclient"],
                f["pkts_toserver"],
            ),
            strict=True,
        ):
            col.append(value)
    return len(cols[0])


def plain_zeek(stream: io.BufferedReader) -> int:
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    keep = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 16, 18)
    cols: list[list[str]] = [[] for _ in keep]
    for row in csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE):
        if not row or row[0].startswith("#"):
            continue
        for col, i in zip(cols, keep, strict=True):
            col.append(row[i])
    return len(cols[0])


def ours(reader: Callable[..., object], conversations: bool) -> Callable[[io.BufferedReader], int]:
    def run(stream: io.BufferedReader) -> int:
        report = FlowReport()
        series = ConversationSeries(interval_s=3600, lateness_s=REPLAY_LATENESS_S)
        rows = 0
        for flows in reader(stream, report=report):  # type: ignore[operator]
            if conversations:
                rows += len(series.update(flows))
        if conversations:
            rows += len(series.flush())
        assert report.error_count == 0, report.errors[:3]
        assert not conversations or series.late_ == 0
        return report.flows

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    for label, paths, reader, plain, baseline in (
        ("EVE JSON", EVE, read_eve, plain_eve, "json.loads loop"),
        ("conn.log TSV", ZEEK, read_zeek, plain_zeek, "csv.reader loop"),
    ):
        make, lines = replay(paths, args.lines)
        base_s, base_flows = best_of(plain, args.repeats, make)
        flows_s, flows = best_of(ours(reader, False), args.repeats, make)
        conv_s, _ = best_of(ours(reader, True), args.repeats, make)
        assert flows == base_flows, (flows, base_flows)
        print(
            f"{label:<13} {lines:>10,} lines, {flows:>9,} flows | "
            f"baseline ({baseline}) {lines / base_s:>9,.0f} lines/s | "
            f"→ Flows {lines / flows_s:>9,.0f} lines/s (x{base_s / flows_s:4.2f}) | "
            f"→ conversation Batches {lines / conv_s:>9,.0f} lines/s"
        )


if __name__ == "__main__":
    main()
