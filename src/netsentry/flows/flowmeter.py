"""A flow meter: packets → bidirectional flows with idle, active and TCP close expiry.

A flow is keyed by its 5-tuple in both directions (protocol, addresses, ports; ICMP and
the other protocols without ports by protocol and address pair):

* the *originator* (``src``) is the sender of the flow's first packet, except that a
  TCP flow whose first packet is a SYN-ACK (its SYN was not captured) is turned round;
* bytes are IP-level, headers included (IPv4 total length, IPv6 40 + payload length,
  as the IP header says, so a short snap length loses nothing), like Zeek's
  ``orig_ip_bytes``/``resp_ip_bytes`` and NetFlow's octets; ``out`` = originator →
  responder; ``start``/``end`` are the first and last packet's timestamps (ns);
* a flow ends (its ``state``) on ``idle``: no packet for ``idle_timeout_s`` (default
  60 s, Zeek's UDP and ICMP inactivity timeout; IPFIX meters use 15-300 s), and a later
  packet starts a new flow; ``active``: it has lasted ``active_timeout_s`` (default
  1800 s, the 30 min of YAF and nProbe) and goes on as a new flow with the same
  originator; ``fin``/``rst``: FIN from both sides, or a RST, then ``close_timeout_s``
  (default 5 s, Zeek's ``tcp_close_delay``) for the trailing ACKs and retransmissions,
  unless a new SYN reuses the tuple first; ``eof``: still open at :meth:`FlowMeter.flush`.

Time is the capture's: the latest packet timestamp seen. Open flows are checked for
expiry once per second of capture time. ``service`` is ``""``: a meter does not look at
payloads.
"""

from __future__ import annotations

import socket
from typing import Any

import dpkt
import polars as pl

from netsentry.flows.schema import FLOW_SCHEMA, STREAM_NAME, Flows

__all__ = ["NS", "PROTO_NAMES", "FlowMeter"]

NS = 1_000_000_000
#: IANA protocol numbers → the ``proto`` names of the flow schema (else the number).
PROTO_NAMES = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp", 51: "ah"}
PROTO_NAMES |= {58: "ipv6-icmp", 103: "pim", 112: "vrrp", 132: "sctp"}
_SYN, _RST, _ACK, _FIN = dpkt.tcp.TH_SYN, dpkt.tcp.TH_RST, dpkt.tcp.TH_ACK, dpkt.tcp.TH_FIN
#: Fields of an open flow, in a list (one per flow, updated in place).
_START, _LAST, _LO_ORIG, _B_LO, _B_HI, _P_LO, _P_HI, _FINS, _END = range(9)
_Key = tuple[int, bytes, int, bytes, int]
_COLUMNS = list(FLOW_SCHEMA)[:-1]  # all but source


class FlowMeter:
    """Bidirectional flows from decoded packets, with idle, active and TCP close expiry.

    Parameters
    ----------
    idle_timeout_s, active_timeout_s, close_timeout_s : float
        See the module documentation.
    source : str
        The ``source`` column of the flows.

    Examples
    --------
    >>> meter = FlowMeter(idle_timeout_s=60)
    >>> a, b = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    >>> meter.add(0, 17, a, 5353, b, 53, 60, 0)  # a DNS query: protocol 17, 60 bytes
    >>> meter.add(1_000_000, 17, b, 53, a, 5353, 120, 0)  # the answer, 1 ms later
    >>> meter.flush()
    >>> meter.take().frame.select("src", "dstp", "bytes_out", "bytes_in", "end", "state").row(0)
    ('10.0.0.1', 53, 60, 120, 1000000, 'eof')
    """

    def __init__(
        self,
        idle_timeout_s: float = 60.0,
        active_timeout_s: float = 1800.0,
        close_timeout_s: float = 5.0,
        source: str = STREAM_NAME,
    ) -> None:
        for name, value in (("idle", idle_timeout_s), ("active", active_timeout_s)):
            if not value > 0:
                raise ValueError(f"{name}_timeout_s must be positive, got {value}")
        if not close_timeout_s >= 0:
            raise ValueError(f"close_timeout_s must be >= 0, got {close_timeout_s}")
        self.idle = round(idle_timeout_s * NS)
        self.active = round(active_timeout_s * NS)
        self.close = round(close_timeout_s * NS)
        self.source = source
        self.now = 0
        self.open: dict[_Key, list[Any]] = {}
        self.rows: list[tuple[Any, ...]] = []
        self._next_sweep = 0

    def add(
        self, ts: int, p: int, src: bytes, sp: int, dst: bytes, dp: int, size: int, fl: int
    ) -> None:
        """Count one packet (``sp``/``dp`` -1 without ports; ``fl``: TCP flags)."""
        lo_sent = (src, sp) <= (dst, dp)
        key = (p, src, sp, dst, dp) if lo_sent else (p, dst, dp, src, sp)
        flow = self.open.get(key)
        if ts > self.now:
            self.now = ts
        if flow is not None:
            end = flow[_END]
            if end is not None and (ts - flow[_LAST] > self.close or fl & (_SYN | _ACK) == _SYN):
                self._export(key, flow, end)
                flow = None
            elif ts - flow[_LAST] > self.idle:
                self._export(key, flow, "idle")
                flow = None
            elif ts - flow[_START] >= self.active:
                self._export(key, flow, "active")
                flow = [ts, ts, flow[_LO_ORIG], 0, 0, 0, 0, 0, None]
                self.open[key] = flow
        if flow is None:
            turn = fl & (_SYN | _ACK) == _SYN | _ACK
            flow = self.open[key] = [ts, ts, lo_sent != turn, 0, 0, 0, 0, 0, None]
        if ts > flow[_LAST]:
            flow[_LAST] = ts
        elif ts < flow[_START]:
            flow[_START] = ts
        if lo_sent:
            flow[_B_LO] += size
            flow[_P_LO] += 1
        else:
            flow[_B_HI] += size
            flow[_P_HI] += 1
        if fl & (_FIN | _RST):
            flow[_FINS] |= (1 if lo_sent else 2) if fl & _FIN else 3
            if flow[_FINS] == 3 and flow[_END] is None:
                flow[_END] = "rst" if fl & _RST else "fin"
        if ts >= self._next_sweep:
            self.expire()
            self._next_sweep = ts + NS

    def expire(self) -> None:
        """Export the flows that timed out by the capture's time."""
        now = self.now
        done = [
            (key, f, f[_END] or ("idle" if now - f[_LAST] > self.idle else "active"))
            for key, f in self.open.items()
            if now - f[_LAST] > (self.idle if f[_END] is None else self.close)
            or now - f[_START] >= self.active
        ]
        for key, flow, why in done:
            self._export(key, flow, why)

    def flush(self) -> None:
        """Export every open flow (end of capture)."""
        for key, flow in list(self.open.items()):
            self._export(key, flow, flow[_END] or "eof")

    def _export(self, key: _Key, f: list[Any], state: str) -> None:
        del self.open[key]
        p, a, ap, b, bp = key
        if not f[_LO_ORIG]:
            a, ap, b, bp = b, bp, a, ap
            counts = (f[_B_HI], f[_B_LO], f[_P_HI], f[_P_LO])
        else:
            counts = (f[_B_LO], f[_B_HI], f[_P_LO], f[_P_HI])
        ports = (None if ap < 0 else ap, None if bp < 0 else bp)
        proto = PROTO_NAMES.get(p, str(p))
        self.rows.append(
            (f[_START], f[_LAST], _text(a), _text(b), *ports, proto, "", *counts, state)
        )

    def take(self, limit: int | None = None) -> Flows:
        """The first ``limit`` (default: all) exported flows not taken yet, by start."""
        rows, self.rows = self.rows[:limit], self.rows[len(self.rows) if limit is None else limit :]
        frame = pl.DataFrame(rows, schema=_COLUMNS, orient="row", schema_overrides=FLOW_SCHEMA)
        source = pl.lit(self.source, pl.String).alias("source")
        return Flows(frame.with_columns(source).sort("start", maintain_order=True))


def _text(address: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(address) == 4 else socket.AF_INET6, address)
