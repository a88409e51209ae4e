"""pcap → flows: packet counts, the Zeek conn.log of the same capture, the Corelight C2
connections, expiry rules, pcapng / gzip, malformed packets."""

from __future__ import annotations

import gzip
import lzma
import struct

import dpkt
import polars as pl
import pytest
from flowdata import DATA, SECOND

from netsentry.flows.flowmeter import FlowMeter
from netsentry.flows.pcap import PcapReport, _Decoder, _fast, read_pcap
from netsentry.flows.schema import Flows

PCAP = DATA.parent / "pcap"
HONEYPOT = PCAP / "iot23-honeypot-4-1.pcap.xz"
ZEEK_CONN = DATA / "iot23-honeypot-4-1.conn.log.labeled"  # Zeek's log of the same capture
#: The first 20 of its #fields (the last three are separated by three spaces).
ZEEK_FIELDS = [
    *("ts", "uid", "orig_h", "orig_p", "resp_h", "resp_p", "proto", "service", "duration"),
    *("orig_bytes", "resp_bytes", "conn_state", "local_orig", "local_resp", "missed_bytes"),
    *("history", "orig_pkts", "orig_ip_bytes", "resp_pkts", "resp_ip_bytes"),
]

PACKETS = {  # capinfos -c of the files (the Corelight heads: packets kept)
    "iot23-honeypot-4-1.pcap.xz": 21_664,
    "malicious-ssh-bruteforce.pcap.xz": 1_178,
    "test12-icmp-portscan.pcap": 37,
    "corelight-agenttesla-c2-ftp.pcap.xz": 457,
    "corelight-agenttesla-c2-http.head673.pcap.xz": 673,
    "corelight-agenttesla-c2-smtp.head1055.pcap.xz": 1_055,
    "corelight-agenttesla-c2-smtp-2.head222.pcap.xz": 222,
    "corelight-asyncrat-asyncrat.head200.pcap.xz": 200,
    "corelight-asyncrat-dcrat.head1154.pcap.xz": 1_154,
    "corelight-asyncrat-sxn.head867.pcap.xz": 867,
}

#: The C2 connection (orig_h, orig_p, resp_h, resp_p) of each Corelight trace, from the
#: Zeek notice.log baselines of corelight/zeek-agenttesla-detector and
#: zeek-asyncrat-detector (testing/Baseline/tests.<name>/notice.log).
C2 = {
    "corelight-agenttesla-c2-ftp.pcap.xz": ("192.168.100.164", 49210, "143.95.79.226", 44523),
    "corelight-agenttesla-c2-http.head673.pcap.xz": ("192.168.100.134", 49754, "78.41.139.12", 80),
    "corelight-agenttesla-c2-smtp.head1055.pcap.xz": (
        "192.168.100.122",
        49713,
        "208.91.198.143",
        587,
    ),
    "corelight-agenttesla-c2-smtp-2.head222.pcap.xz": (
        "192.168.100.40",
        49168,
        "43.255.154.57",
        587,
    ),
    "corelight-asyncrat-asyncrat.head200.pcap.xz": (
        "192.168.100.124",
        49207,
        "181.131.218.39",
        4041,
    ),
    "corelight-asyncrat-dcrat.head1154.pcap.xz": ("192.168.100.20", 49218, "186.169.47.11", 7084),
    "corelight-asyncrat-sxn.head867.pcap.xz": ("192.168.100.163", 49757, "94.156.71.237", 4782),
}


def read(source, **kwargs) -> tuple[pl.DataFrame, PcapReport]:
    report = PcapReport()
    chunks = list(read_pcap(source, report=report, **kwargs))
    assert all(len(c) for c in chunks)
    return Flows.concat(chunks).frame, report


@pytest.fixture(scope="module")
def honeypot() -> tuple[pl.DataFrame, PcapReport]:
    return read(HONEYPOT)


@pytest.mark.parametrize(("name", "packets"), PACKETS.items())
def test_every_packet_is_accounted_for(name, packets):
    flows, report = read(PCAP / name)
    assert report.packets == packets
    assert report.error_count == 0
    assert report.packets == report.in_flows + sum(report.skipped.values())
    assert flows["packets_out"].sum() + flows["packets_in"].sum() == report.in_flows
    assert report.flows == len(flows) and report.link_type == 1  # Ethernet


def test_honeypot_flows_and_skipped_frames(honeypot):
    flows, report = honeypot
    assert report.skipped == {"arp": 4743}
    assert len(flows) == 534
    assert dict(flows["state"].value_counts().iter_rows()) == {
        "idle": 310,
        "fin": 140,
        "active": 81,
        "eof": 2,
        "rst": 1,
    }
    first_ntp = flows.filter(pl.col("srcp") == 58687).row(0, named=True)  # Zeek's first line
    assert first_ntp == {
        "start": 1540469302_538640000,
        "end": 1540469302_652824000,  # Zeek: duration 0.114184
        "src": "192.168.1.132",
        "dst": "216.239.35.4",
        "srcp": 58687,
        "dstp": 123,
        "proto": "udp",
        "service": "",
        "bytes_out": 76,  # Zeek's orig_ip_bytes, resp_ip_bytes
        "bytes_in": 76,
        "packets_out": 1,
        "packets_in": 1,
        "state": "idle",
        "source": str(HONEYPOT),
    }


def zeek_conns() -> pl.DataFrame:
    frame = pl.read_csv(
        ZEEK_CONN, separator="\t", comment_prefix="#", has_header=False, infer_schema=False
    )
    frame = frame.select(frame.columns[:20])
    frame = frame.rename(dict(zip(frame.columns, ZEEK_FIELDS, strict=True)))
    return frame.with_columns(
        (pl.col("ts").str.replace(".", "", literal=True).cast(pl.Int64) * 1000).alias("zeek_start"),
        *(pl.col(c).cast(pl.Int32) for c in ("orig_p", "resp_p")),
        *(pl.col(c).cast(pl.Int64) for c in ZEEK_FIELDS[16:]),
    )


def test_flows_match_zeek_conn_log_of_the_same_capture(honeypot):
    """Every Zeek connection is one of our flows: same 5-tuple and direction, start
    within 1 s. Zeek has no active timeout (its long UDP and TCP connections are cut
    every 1800 s here), a 5 min TCP inactivity timeout (ours: 60 s) and its own rules
    for the packets after a TCP close: the flows it splits differently hold part of
    its packets; all others agree exactly on packets and IP-level bytes each way."""
    ours, _ = honeypot
    zeek = zeek_conns()
    assert len(zeek) == 452
    pairs = zeek.join(
        ours,
        left_on=["orig_h", "orig_p", "resp_h", "resp_p", "proto"],
        right_on=["src", "srcp", "dst", "dstp", "proto"],
        how="inner",
    ).filter((pl.col("start") - pl.col("zeek_start")).abs() <= SECOND)
    matched = pairs.sort("start").unique("uid", keep="first")
    assert matched.height == zeek.height  # required ≥ 95 %: all 452 match
    same = (
        (pl.col("packets_out") == pl.col("orig_pkts"))
        & (pl.col("packets_in") == pl.col("resp_pkts"))
        & (pl.col("bytes_out") == pl.col("orig_ip_bytes"))
        & (pl.col("bytes_in") == pl.col("resp_ip_bytes"))
    )
    assert matched.filter(same).height >= 0.95 * zeek.height  # 442 of 452
    differ = matched.filter(~same)
    split = differ.filter(pl.col("state").is_in(["idle", "active"]))
    assert (split["packets_out"] <= split["orig_pkts"]).all()  # a part of Zeek's connection
    assert (split["packets_in"] <= split["resp_pkts"]).all()
    closed = differ.filter(~pl.col("state").is_in(["idle", "active"]))
    assert closed["state"].is_in(["fin", "rst"]).all()
    assert ((closed["packets_out"] - closed["orig_pkts"]).abs() <= 2).all()
    assert ((closed["packets_in"] - closed["resp_pkts"]).abs() <= 2).all()
    # totals over the capture: packets within 0.1 %, IP bytes within 1 %
    zeek_packets = zeek["orig_pkts"].sum() + zeek["resp_pkts"].sum()
    our_packets = ours["packets_out"].sum() + ours["packets_in"].sum()
    assert abs(our_packets - zeek_packets) <= 0.001 * zeek_packets  # 16,921 vs 16,912
    zeek_bytes = zeek["orig_ip_bytes"].sum() + zeek["resp_ip_bytes"].sum()
    our_bytes = ours["bytes_out"].sum() + ours["bytes_in"].sum()
    assert abs(our_bytes - zeek_bytes) <= 0.01 * zeek_bytes  # 3,693,650 vs 3,672,845


@pytest.mark.parametrize(("name", "c2"), C2.items())
def test_corelight_c2_connection_is_a_flow_from_the_infected_host(name, c2):
    flows, _ = read(PCAP / name)
    src, srcp, dst, dstp = c2
    hit = flows.filter(
        (pl.col("src") == src) & (pl.col("srcp") == srcp) & (pl.col("dst") == dst)
    ).filter(pl.col("dstp") == dstp)
    assert hit.height >= 1
    assert hit["proto"].to_list()[0] == "tcp"
    assert hit["packets_out"][0] >= 1 and hit["packets_in"][0] >= 1
    reversed_ = flows.filter((pl.col("src") == dst) & (pl.col("dst") == src))
    assert reversed_.filter(pl.col("srcp") == dstp).is_empty()


def test_icmp_flows_have_no_ports():
    flows, report = read(PCAP / "test12-icmp-portscan.pcap")
    assert (report.packets, len(flows)) == (37, 18)  # one sweep, 18 hosts
    assert flows["proto"].unique().to_list() == ["icmp"]
    assert flows["srcp"].null_count() == flows["dstp"].null_count() == 18
    assert flows["src"].unique().to_list() == ["192.168.1.109"]  # the scanner


def test_chunks_stream_and_add_up(honeypot):
    whole, _ = honeypot
    report = PcapReport()
    chunks = list(read_pcap(HONEYPOT, report=report, chunk_flows=50))
    assert len(chunks) == 11 and all(0 < len(c) <= 50 for c in chunks)
    got = Flows.concat(chunks).frame.sort("start", "src", "srcp")
    assert got.equals(whole.sort("start", "src", "srcp"))
    assert report.flows == len(whole)


def test_longer_timeouts_make_one_flow_per_connection(honeypot):
    few, report = read(HONEYPOT, idle_timeout_s=1e7, active_timeout_s=1e7)
    many, _ = honeypot
    assert len(few) == 438 < len(many)  # softflowd's 438 flows of this capture
    assert few["packets_out"].sum() + few["packets_in"].sum() == report.in_flows


def test_pcapng_gzip_and_stream_give_the_same_flows(tmp_path):
    source = PCAP / "malicious-ssh-bruteforce.pcap.xz"
    expected, _ = read(source)
    pcapng = tmp_path / "ssh.pcapng"
    with lzma.open(source) as f, pcapng.open("wb") as out:
        writer = dpkt.pcapng.Writer(out)
        for ts, frame in dpkt.pcap.Reader(f):
            writer.writepkt(frame, ts=ts)
    gz = tmp_path / "ssh.pcap.gz"
    gz.write_bytes(gzip.compress(lzma.decompress(source.read_bytes())))
    for path in (pcapng, gz):
        got, report = read(path)
        assert got.drop("source").equals(expected.drop("source"))
        assert report.packets == 1178
    with pcapng.open("rb") as stream:
        got, _ = read(stream, name="ssh")
    assert got["source"].unique().to_list() == ["ssh"]


def record_offsets(data: bytes) -> list[int]:
    """Byte offset of every record of a classic pcap."""
    offsets, at = [], 24
    while at < len(data):
        offsets.append(at)
        at += 16 + struct.unpack_from("<I", data, at + 8)[0]
    return offsets


def test_malformed_packets_are_reported_and_the_rest_kept(tmp_path):
    data = bytearray((PCAP / "test12-icmp-portscan.pcap").read_bytes())
    offsets = record_offsets(bytes(data))
    data[offsets[2] + 16 + 14] = 0x44  # packet 3: IPv4 header length 4 words (< 20 bytes)
    cut = bytes(data[: offsets[36] + 20])  # the last record cut after 4 of its 98 bytes
    path = tmp_path / "broken.pcap"
    path.write_bytes(cut)
    flows, report = read(path)
    assert report.packets == 37
    assert [(e.packet, e.offset) for e in report.errors] == [(3, offsets[2]), (37, offsets[36])]
    assert report.errors[0].reason == "malformed IPv4 header: invalid header length"
    assert report.errors[1].reason.startswith("record cut at 4 of")
    assert str(report.errors[0]).startswith(f"{path}: packet 3 at byte {offsets[2]}: ")
    assert report.in_flows == 35 == flows["packets_out"].sum() + flows["packets_in"].sum()


def test_not_a_capture(tmp_path):
    path = tmp_path / "text.pcap"
    path.write_bytes(b"this is not a capture at all, just text\n")
    with pytest.raises(ValueError, match="not a pcap or pcapng capture"):
        list(read_pcap(path))


def test_progress_bar(capsys):
    list(read_pcap(PCAP / "test12-icmp-portscan.pcap", progress=True))
    assert "2.17k/2.17k" in capsys.readouterr().err  # the file's bytes


# -- the flow meter's rules, one packet at a time ----------------------------------

A, B = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
SYN, ACK, FIN, RST = dpkt.tcp.TH_SYN, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST


def flows_of(meter: FlowMeter, packets) -> list[dict]:
    for t, sender, flags in packets:
        src, sp, dst, dp = (A, 40000, B, 443) if sender == "a" else (B, 443, A, 40000)
        meter.add(round(t * SECOND), 6, src, sp, dst, dp, 60, flags)
    meter.flush()
    return (
        meter.take().frame.select("start", "src", "packets_out", "packets_in", "state").to_dicts()
    )


def test_syn_ack_first_turns_the_flow_round():
    got = flows_of(FlowMeter(), [(0, "b", SYN | ACK), (0.1, "a", ACK)])
    assert got == [
        {"start": 0, "src": "10.0.0.1", "packets_out": 1, "packets_in": 1, "state": "eof"}
    ]


def test_idle_timeout_splits_and_active_timeout_keeps_the_originator():
    idle = flows_of(
        FlowMeter(idle_timeout_s=60), [(0, "a", SYN), (30, "b", SYN | ACK), (91, "b", ACK)]
    )
    assert [(f["src"], f["state"]) for f in idle] == [("10.0.0.1", "idle"), ("10.0.0.2", "eof")]
    every_10s = [(t, "ab"[t // 10 % 2], ACK) for t in range(0, 250, 10)]
    active = flows_of(FlowMeter(idle_timeout_s=60, active_timeout_s=100), every_10s)
    assert [(f["start"] // SECOND, f["src"], f["state"]) for f in active] == [
        (0, "10.0.0.1", "active"),
        (100, "10.0.0.1", "active"),
        (200, "10.0.0.1", "eof"),
    ]


def test_fin_and_rst_close_after_the_trailing_packets():
    handshake = [(0, "a", SYN), (0.1, "b", SYN | ACK), (0.2, "a", ACK)]
    closing = [(1, "a", FIN | ACK), (1.1, "b", FIN | ACK), (1.2, "a", ACK)]  # last ACK counts
    reuse = [(2, "a", SYN), (2.1, "b", RST)]  # a new SYN on the same tuple, refused
    got = flows_of(FlowMeter(close_timeout_s=5), handshake + closing + reuse + [(10, "a", ACK)])
    assert [(f["packets_out"], f["packets_in"], f["state"]) for f in got] == [
        (4, 2, "fin"),
        (1, 1, "rst"),
        (1, 0, "eof"),  # 7.9 s after the RST: a new flow
    ]


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_the_struct_fast_path_decodes_as_dpkt(name):
    """Every packet: the same key, size and flags with and without the fast path."""
    with lzma.open(PCAP / name) if name.endswith(".xz") else open(PCAP / name, "rb") as f:
        frames = [frame for _, frame in dpkt.pcap.Reader(f)]
    fast, slow = _Decoder(1), _Decoder(1, fast=False)
    taken = 0
    for frame in frames:
        assert fast.decode(frame) == slow.decode(frame)
        taken += _fast(frame) is not None
    assert taken > 0 or name.startswith("test12")  # ICMP only: never the fast path
