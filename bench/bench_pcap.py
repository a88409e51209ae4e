"""Packets per second into flows (``read_pcap``) beside a plain dpkt loop, same run.

The input is the real captures of ``shared/data/pcap`` (IoT-23 honeypot 4-1 and the
Muhstik excerpt, the Slips captures, the Corelight traces: Ethernet, mostly TCP and
UDP, some ARP and LLC), put one after the other in one in-memory pcap, each shifted to
start a day after the previous one ends, and repeated (shifted again) until it holds
``--packets`` packets (200k by default). Both sides read the same bytes from memory:

* baseline: ``dpkt.pcap.Reader`` and ``dpkt.ethernet.Ethernet(frame)`` for every packet,
  which decodes Ethernet, IP and TCP/UDP and nothing else: parsing only;
* ours: ``read_pcap``, which parses the same way (its own record loop, dpkt for the
  headers) and meters the flows (idle 60 s, active 1800 s), yielding Flows chunks.

Best of ``--repeats`` runs for each.

    .venv/bin/python bench/bench_pcap.py
    .venv/bin/python bench/bench_pcap.py --packets 1000000
"""

from __future__ import annotations

import argparse
import io
import lzma
import struct
from pathlib import Path

import dpkt

from netsentry.flows.pcap import PcapReport, read_pcap
from timing import best_of

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pcap"
DAY_NS = 86_400 * 1_000_000_000


def records(path: Path) -> list[tuple[int, bytes]]:
    """(timestamp ns, frame) of every packet of a microsecond Ethernet pcap."""
    data = lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    assert data[:4] == b"\xd4\xc3\xb2\xa1" and struct.unpack_from("<I", data, 20)[0] == 1
    out, at = [], 24
    while at < len(data):
        sec, usec, caplen, _ = struct.unpack_from("<IIII", data, at)
        out.append((sec * 1_000_000_000 + usec * 1000, data[at + 16 : at + 16 + caplen]))
        at += 16 + caplen
    return out


def replay(packets: int) -> tuple[bytes, int]:
    """An in-memory pcap of the captures, shifted and repeated to ``packets`` packets."""
    captures = [records(p) for p in sorted(DATA.rglob("*.pcap*"))]
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262_144, 1)]
    count, origin = 0, min(c[0][0] for c in captures)
    while count < packets:
        for capture in captures:
            shift = origin - capture[0][0]
            for ts, frame in capture:
                t = ts + shift
                out.append(
                    struct.pack("<IIII", t // 10**9, t % 10**9 // 1000, len(frame), len(frame))
                )
                out.append(frame)
            count += len(capture)
            origin = capture[-1][0] + shift + DAY_NS
    return b"".join(out), count


def plain_dpkt(stream: io.BytesIO) -> int:
    n = 0
    for _, frame in dpkt.pcap.Reader(stream):
        dpkt.ethernet.Ethernet(frame)
        n += 1
    return n


def ours(stream: io.BytesIO) -> int:
    report = PcapReport()
    flows = sum(len(chunk) for chunk in read_pcap(stream, report=report))
    assert report.error_count == 0 and flows == report.flows
    return report.packets


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data, packets = replay(args.packets)
    base_s, base_n = best_of(plain_dpkt, args.repeats, lambda: io.BytesIO(data))
    ours_s, ours_n = best_of(ours, args.repeats, lambda: io.BytesIO(data))
    assert base_n == ours_n == packets
    report = PcapReport()
    flows = sum(len(c) for c in read_pcap(io.BytesIO(data), report=report))
    print(
        f"pcap {packets:,} packets ({len(data) / 1e6:.0f} MB, {flows:,} flows) | "
        f"baseline (dpkt parse loop) {packets / base_s:>9,.0f} packets/s | "
        f"→ Flows {packets / ours_s:>9,.0f} packets/s (x{base_s / ours_s:4.2f})"
    )


if __name__ == "__main__":
    main()
