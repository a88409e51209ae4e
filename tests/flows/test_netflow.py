"""NetFlow v5 / v9 / IPFIX: Debian's softflowd replays real captures to the collector on
a free loopback port; its records are compared with the pcap flow meter's flows."""

from __future__ import annotations

import lzma
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
from flowdata import DATA

from netsentry.flows.netflow import NetFlowCollector
from netsentry.flows.pcap import read_pcap
from netsentry.flows.schema import Flows

PCAP = DATA.parent / "pcap"
CAPTURES = ("malicious-ssh-bruteforce.pcap.xz", "iot23-honeypot-4-1.pcap.xz")
MS = 1_000_000
TUPLE = ["src", "srcp", "dst", "dstp", "proto"]


@pytest.fixture(scope="module")
def pcaps(tmp_path_factory) -> dict[str, Path]:
    """The captures, decompressed (softflowd reads plain pcap only)."""
    if shutil.which("softflowd") is None or shutil.which("softflowctl") is None:
        raise RuntimeError("softflowd is not installed: run scripts/ensure-test-servers.sh")
    folder = tmp_path_factory.mktemp("pcap")
    paths = {}
    for name in CAPTURES:
        paths[name] = folder / name.removesuffix(".xz")
        paths[name].write_bytes(lzma.decompress((PCAP / name).read_bytes()))
    return paths


def replay(pcap: Path, version: int, port: int, receive=lambda: None) -> None:
    """softflowd ``-r pcap`` exporting to 127.0.0.1:port until it is done.

    softflowd 1.1.0 either ends by itself at the end of the file or (depending on its
    control socket's path) reads the file only when woken by a control command, up to
    8192 packets each time: ``statistics`` is sent until its packet count stops
    growing, then ``shutdown``, which exports the flows still open.
    """
    with tempfile.TemporaryDirectory(prefix="sf", dir="/tmp") as tmp:
        ctl = f"{tmp}/ctl"
        command = ["softflowd", "-d", "-r", str(pcap), "-n", f"127.0.0.1:{port}"]
        command += ["-v", str(version), "-A", "milli", "-c", ctl, "-p", f"{tmp}/pid"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, processed = time.monotonic() + 30, -1
        try:
            while process.poll() is None and time.monotonic() < deadline:
                receive()
                if not Path(ctl).exists():
                    continue
                stats = subprocess.run(
                    ["softflowctl", "-c", ctl, "statistics"], capture_output=True, text=True
                )
                count = re.search(r"Packets processed: (\d+)", stats.stdout)
                if count is None or int(count[1]) > processed:
                    processed = int(count[1]) if count else processed
                    continue
                subprocess.run(["softflowctl", "-c", ctl, "shutdown"], capture_output=True)
                process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        assert process.returncode == 0


def collect(pcap: Path, version: int, **kwargs) -> tuple[pl.DataFrame, NetFlowCollector]:
    with NetFlowCollector(port=0, **kwargs) as collector:
        replay(pcap, version, collector.address[1], lambda: collector.poll(0.02))
        flows = Flows.concat(list(collector.stream(idle_timeout_s=0.1, poll_s=0.05)))
    return flows.frame, collector


def raw_export(pcap: Path, version: int) -> list[bytes]:
    """softflowd's datagrams as sent, received by a plain UDP socket."""
    datagrams: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink:
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(0.02)

        def receive() -> None:
            try:
                while True:
                    datagrams.append(sink.recv(65_535))
            except TimeoutError:
                return

        replay(pcap, version, sink.getsockname()[1], receive)
        sink.settimeout(0.1)
        receive()
    return datagrams


@pytest.fixture(scope="module")
def directions(pcaps) -> dict[str, pl.DataFrame]:
    """Each capture's flows (no timeouts: softflowd's replay expires none) per direction."""
    out = {}
    for name, path in pcaps.items():
        flows = Flows.concat(list(read_pcap(path, idle_timeout_s=1e7, active_timeout_s=1e7)))
        f = flows.frame
        back = f.select(src="dst", srcp="dstp", dst="src", dstp="srcp", proto="proto")
        out[name] = pl.concat(
            [
                f.select(*TUPLE, "start", "end", bytes="bytes_out", packets="packets_out"),
                pl.concat(
                    [back, f.select("start", "end", bytes="bytes_in", packets="packets_in")],
                    how="horizontal",
                ),
            ]
        ).filter(pl.col("packets") > 0)
    return out


@pytest.mark.parametrize("version", [5, 9, 10])
@pytest.mark.parametrize("name", CAPTURES)
def test_softflowd_export_matches_the_pcap_flows(pcaps, directions, name, version):
    """One record per flow direction, the same packets; octets ≥ the IP bytes and at
    most 6 more per packet (softflowd counts the Ethernet padding of short frames:
    a 40-byte IP packet travels in a 46-byte minimum payload)."""
    records, collector = collect(pcaps[name], version)
    report = collector.report
    assert report.error_count == report.pending == report.dropped == 0
    assert set(report.versions) == {version}
    expected = directions[name]
    assert len(records) == len(expected)  # 134 and 874
    assert records["packets_out"].sum() == expected["packets"].sum()  # 1,178 and 16,921
    assert (records["bytes_in"] == 0).all() and (records["packets_in"] == 0).all()
    pairs = records.join(expected, on=TUPLE, how="inner", nulls_equal=True)
    assert len(pairs) == len(expected)  # every direction, once
    assert (pairs["packets_out"] == pairs["packets"]).all()
    padding = pairs["bytes_out"] - pairs["bytes"]
    assert (padding >= 0).all() and (padding <= 6 * pairs["packets"]).all()
    if version != 5:  # -A milli: absolute times, truncated to the millisecond
        assert ((pairs["start_right"] - pairs["start"]).is_between(0, MS - 1)).all()
        assert ((pairs["end_right"] - pairs["end"]).is_between(-(MS - 1), MS - 1)).all()


def has_template(datagram: bytes, version: int) -> bool:
    at = 20 if version == 9 else 16
    while at + 4 <= len(datagram):
        set_id, length = struct.unpack_from("!HH", datagram, at)
        if set_id in ((0, 1) if version == 9 else (2, 3)):
            return True
        if length == 0:
            return False
        at += length
    return False


def send(collector: NetFlowCollector, datagrams: list[bytes], sender: socket.socket) -> None:
    for datagram in datagrams:
        sender.sendto(datagram, collector.address)
        collector.poll(0.2)


@pytest.mark.parametrize("version", [9, 10])
def test_records_before_their_template_wait_for_it(pcaps, version):
    datagrams = raw_export(pcaps["iot23-honeypot-4-1.pcap.xz"], version)
    templates = [d for d in datagrams if has_template(d, version)]
    data = [d for d in datagrams if not has_template(d, version)]
    assert len(templates) == 2 and len(data) == 30  # 32 datagrams: a template, a refresh
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        with NetFlowCollector(port=0) as late:  # the template last: all wait, then all decode
            send(late, data, a)
            assert (late.report.pending, late.report.flows) == (30, 0)
            send(late, templates, a)
            assert late.report.pending == 0 and late.report.dropped == 0
            assert len(late.take()) == 874
        with NetFlowCollector(port=0, max_pending=5) as bounded:  # 25 dropped
            send(bounded, data + templates, a)
            assert (bounded.report.dropped, bounded.report.pending) == (25, 0)
            assert 0 < len(bounded.take()) < 874
        with NetFlowCollector(port=0) as scoped:  # another exporter's template does not fit
            send(scoped, data, a)
            send(scoped, templates, b)
            assert scoped.report.pending == 30
            rows = scoped.take()
            assert 0 < len(rows) < 874 and rows.frame["source"].unique().to_list() == ["127.0.0.1"]


def test_malformed_datagrams_are_counted_and_the_rest_decoded(pcaps):
    good = raw_export(pcaps["malicious-ssh-bruteforce.pcap.xz"], 9)
    v5 = raw_export(pcaps["malicious-ssh-bruteforce.pcap.xz"], 5)
    bad = [
        b"",  # empty
        b"\x00",  # shorter than a version
        b"\x00\x07" + bytes(22),  # NetFlow v7: not collected
        v5[0][:40],  # a v5 header announcing records that were cut off
        good[0][:30],  # a v9 template set cut in its first record
        b"\x00\x0a\x00\x40" + bytes(12) + b"\x00\x02\x00\x30" + bytes(8),  # IPFIX, cut set
    ]
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        NetFlowCollector(port=0) as collector,
    ):
        send(collector, bad + good, sender)
        report = collector.report
        assert report.datagrams == len(bad) + len(good)
        assert report.error_count == len(bad)
        assert {e.exporter for e in report.errors} == {"127.0.0.1"}
        assert report.errors[2].reason == "unknown NetFlow version 7"
        assert len(collector.take()) == 134  # every record of the good export
