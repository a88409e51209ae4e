"""Rule-based signals on flows: new conversations, new server ports, fan-out (scans).

:class:`FlowSignals` keeps what it has seen and returns a :class:`Signal` for:

``new_conversation``
    The first flow from ``src`` to ``dst`` on server port ``dstp`` over ``proto`` (the
    service is not part of it: a port first seen unidentified then as ``http`` is one
    conversation here).
``new_server_port``
    A host that was already seen serving answers on a port it was not seen serving
    before. A port counts as served when the responder answered: ``packets_in > 0``
    and, for Zeek states, a connection was made (not ``REJ``, ``S0``, ``RSTOS0``,
    ``RSTRH``, ``SH``, ``SHR``). Suricata's flow states cannot tell a reset from an
    answer, so there a port closed with a RST counts as served.
``fan_out_destinations``
    One source reaches at least ``max_destinations`` distinct destinations on the same
    port and protocol within one window (a horizontal scan; for ICMP, a sweep).
``fan_out_ports``
    One source reaches at least ``max_ports`` distinct ports of the same destination
    within one window (a vertical scan).
``unanswered_storm``
    At least ``max_unanswered`` flows from one source to the same server port go
    unanswered (as above) within one window: a client hammering a server that is not
    there, the way malware retries its command-and-control server (the RemcosRAT
    capture: 719 refused attempts to one address and port in eight minutes). Its
    ``time`` is the window's first unanswered attempt.

Windows are ``window_s`` long and aligned to the epoch, so a scan that straddles a
boundary is counted in two halves. Each fan-out fires once per window; its ``time`` is
the start of the flow that reached the threshold. New conversations and ports are
learnt silently during the first ``baseline_s`` after the earliest flow seen (else a
first run would report every conversation as new). Fan-out counts all flows by default;
``unanswered_only`` counts only flows that were not served (as above), which spares
busy clients (a benign Windows host in Stratosphere's capture 010 reaches 75 HTTPS
servers within a minute) at the cost of missing scans that get answers. Flows for a
window that the watermark (latest start - ``lateness_s``) has passed are not counted
for fan-out (``late_``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from netsentry.detect.base import State, StateMismatchError, fingerprint
from netsentry.flows.schema import Flows, frame_from_state, frame_to_state

__all__ = ["KINDS", "FlowSignals", "Signal"]

KINDS = (
    "new_conversation",
    "new_server_port",
    "fan_out_destinations",
    "fan_out_ports",
    "unanswered_storm",
)
#: Zeek conn_state values of flows where no connection was made.
REFUSED_STATES = ("REJ", "S0", "RSTOS0", "RSTRH", "SH", "SHR")
_EXAMPLES = 5
_S = pl.String
_CONV = ("src", "dst", "dstp", "proto")
_SCHEMAS: dict[str, dict[str, Any]] = {
    "conversations": dict.fromkeys(_CONV, _S),
    "servers": {"dst": _S, "proto": _S, "dstp": _S, "first": pl.Int64},
    "contacts": {"window": pl.Int64, **dict.fromkeys(_CONV, _S), "first": pl.Int64},
    "attempts": {
        "window": pl.Int64,
        **dict.fromkeys(_CONV, _S),
        "count": pl.Int64,
        "first": pl.Int64,
    },
    "fired": {"window": pl.Int64, "kind": _S, "src": _S, "proto": _S, "target": _S},
}
# fan-out kind → (the column that is counted, the column that completes the group)
_FAN_OUT = {"fan_out_destinations": ("dst", "dstp"), "fan_out_ports": ("dstp", "dst")}


@dataclass(frozen=True)
class Signal:
    """One rule hit: when, on which entity, which rule, and why."""

    time: int
    kind: str
    tags: dict[str, str]
    explanation: dict[str, Any] = field(default_factory=dict)


class FlowSignals:
    """Stateful rule-based signals over flow chunks (see module doc).

    Parameters
    ----------
    baseline_s : float
        Learning period from the earliest flow, without new-conversation or
        new-server-port signals.
    window_s : float
        Length of the fan-out windows.
    max_destinations, max_ports : int
        Fan-out thresholds (distinct destinations per port; distinct ports per
        destination) within a window.
    unanswered_only : bool
        Count only unanswered flows for fan-out.
    lateness_s : float
        How long a fan-out window stays open after the latest flow start passed it.
    """

    def __init__(
        self,
        *,
        baseline_s: float = 3600.0,
        window_s: float = 60.0,
        max_destinations: int = 20,
        max_ports: int = 20,
        max_unanswered: int = 30,
        unanswered_only: bool = False,
        lateness_s: float = 600.0,
    ) -> None:
        if min(max_destinations, max_ports, max_unanswered) < 2:
            raise ValueError("fan-out and unanswered thresholds must be at least 2")
        if not (window_s > 0 and baseline_s >= 0 and lateness_s >= 0):
            raise ValueError("window_s must be positive, baseline_s and lateness_s >= 0")
        self.baseline_s, self.window_s, self.lateness_s = baseline_s, window_s, lateness_s
        self.max_destinations, self.max_ports = max_destinations, max_ports
        self.max_unanswered = max_unanswered
        self.unanswered_only = unanswered_only
        self._window = round(window_s * 1e9)
        self.frames_ = {name: pl.DataFrame(schema=s) for name, s in _SCHEMAS.items()}
        self.origin_: int | None = None
        self.max_start_: int | None = None
        self.late_ = 0

    def update(self, flows: Flows) -> list[Signal]:
        """Signals raised by a chunk of flows, in time order; the state learns them."""
        rows = flows.frame.select(
            *_CONV[:2],
            pl.col("dstp").cast(pl.String).fill_null(""),
            "proto",
            "start",
            (
                (pl.col("packets_in").fill_null(0) > 0) & ~pl.col("state").is_in(REFUSED_STATES)
            ).alias("answered"),
        )
        if not rows.height:
            return []
        closed_before = self._closed()
        first, last = int(rows["start"].min()), int(rows["start"].max())  # type: ignore[arg-type]
        self.origin_ = first if self.origin_ is None else min(self.origin_, first)
        self.max_start_ = last if self.max_start_ is None else max(self.max_start_, last)
        learnt_until = self.origin_ + round(self.baseline_s * 1e9)
        signals = self._new_conversations(rows, learnt_until)
        signals += self._new_server_ports(rows, learnt_until)
        signals += self._unanswered_storm(rows, closed_before)
        signals += self._fan_out(rows, closed_before)
        return sorted(signals, key=lambda s: (s.time, s.kind))

    def _unanswered_storm(self, rows: pl.DataFrame, closed_before: int | None) -> list[Signal]:
        window = (pl.col("start") // self._window * self._window).alias("window")
        attempts = rows.filter(~pl.col("answered")).with_columns(window)
        if closed_before is not None:  # late flows are counted once, by _fan_out
            attempts = attempts.filter(pl.col("window") + self._window > closed_before)
        group = ["window", *_CONV]
        counts = (
            pl.concat(
                [
                    self.frames_["attempts"],
                    attempts.group_by(group).agg(
                        pl.len().cast(pl.Int64).alias("count"), pl.col("start").min().alias("first")
                    ),
                ]
            )
            .group_by(group)
            .agg(pl.col("count").sum(), pl.col("first").min())
        )
        self.frames_["attempts"] = counts.filter(pl.col("window") + self._window > self._closed())
        target = pl.concat_str("dst", pl.lit(":"), "dstp").alias("target")
        hits = (
            counts.filter(pl.col("count") >= self.max_unanswered)
            .with_columns(target)
            .join(
                self.frames_["fired"].filter(pl.col("kind") == "unanswered_storm"),
                on=["window", "src", "proto", "target"],
                how="anti",
            )
        )
        self.frames_["fired"] = pl.concat(
            [
                self.frames_["fired"],
                hits.select(
                    "window", pl.lit("unanswered_storm").alias("kind"), "src", "proto", "target"
                ),
            ]
        )
        return [
            Signal(
                first,
                "unanswered_storm",
                {"src": src, "dst": dst, "dstp": dstp, "proto": proto},
                {
                    "rule": "many unanswered flows to one server port",
                    "unanswered": count,
                    "threshold": self.max_unanswered,
                    "window_start": window_start,
                    "window_s": self.window_s,
                },
            )
            for window_start, src, dst, dstp, proto, count, first in hits.select(
                *group, "count", "first"
            )
            .sort("first")
            .iter_rows()
        ]

    def _new_conversations(self, rows: pl.DataFrame, learnt_until: int) -> list[Signal]:
        known = self.frames_["conversations"]
        seen = rows.group_by(_CONV).agg(pl.col("start").min(), pl.len().alias("flows"))
        new = seen.join(known, on=_CONV, how="anti")
        self.frames_["conversations"] = pl.concat([known, new.select(_CONV)])
        return [
            Signal(
                start,
                "new_conversation",
                dict(zip(_CONV, tags, strict=True)),
                {"rule": "first flow of this IP pair and server port", "flows": flows},
            )
            for *tags, start, flows in new.filter(pl.col("start") >= learnt_until)
            .select(*_CONV, "start", "flows")
            .iter_rows()
        ]

    def _new_server_ports(self, rows: pl.DataFrame, learnt_until: int) -> list[Signal]:
        known = self.frames_["servers"]
        served = (
            rows.filter(pl.col("answered") & (pl.col("dstp") != ""))
            .sort("start")
            .group_by("dst", "proto", "dstp")
            .agg(pl.col("start").first().alias("first"), pl.col("src").first().alias("client"))
        )
        new = served.join(known, on=["dst", "proto", "dstp"], how="anti")
        servers = pl.concat([known, new.select(known.columns)])
        self.frames_["servers"] = servers
        ports = servers.sort("first").group_by("dst").agg("first", "proto", "dstp")
        hits = new.join(ports, on="dst", suffix="_known").filter(
            (pl.col("first") > pl.col("first_known").list.min()) & (pl.col("first") >= learnt_until)
        )
        out = []
        for dst, proto, dstp, first, client, firsts, protos, ports_ in hits.select(
            "dst", "proto", "dstp", "first", "client", "first_known", "proto_known", "dstp_known"
        ).iter_rows():
            before = [
                f"{p}/{q}" for t, q, p in zip(firsts, protos, ports_, strict=True) if t < first
            ]
            explanation = {"rule": "first answer on this port of a known server", "client": client}
            explanation |= {"known_ports": before[:10], "known_port_count": len(before)}
            tags = {"dst": dst, "dstp": dstp, "proto": proto}
            out.append(Signal(first, "new_server_port", tags, explanation))
        return out

    def _closed(self) -> int | None:
        """Windows ending at or before this time are closed (None: nothing seen yet)."""
        if self.max_start_ is None:
            return None
        watermark = self.max_start_ - round(self.lateness_s * 1e9)
        return watermark // self._window * self._window

    def _fan_out(self, rows: pl.DataFrame, closed_before: int | None) -> list[Signal]:
        if self.unanswered_only:
            rows = rows.filter(~pl.col("answered"))
        window = pl.col("start") // self._window * self._window
        contacts = rows.with_columns(window.alias("window"))
        on_time = contacts
        if closed_before is not None:
            on_time = contacts.filter(pl.col("window") + self._window > closed_before)
            self.late_ += contacts.height - on_time.height
        group = ["window", *_CONV]
        contacts = pl.concat(
            [self.frames_["contacts"], on_time.select(*group, pl.col("start").alias("first"))]
        )
        contacts = contacts.group_by(group).agg(pl.col("first").min())
        open_ = pl.col("window") + self._window > self._closed()
        self.frames_["contacts"] = contacts.filter(open_)
        out: list[Signal] = []
        for kind, (counted, fixed) in _FAN_OUT.items():
            threshold = self.max_destinations if kind == "fan_out_destinations" else self.max_ports
            pool = contacts if counted == "dst" else contacts.filter(pl.col("dstp") != "")
            keys = ["window", "src", "proto", fixed]
            hits = (
                pool.sort("first")
                .group_by(keys)
                .agg(pl.col(counted).unique(maintain_order=True), pl.col("first"))
                .filter(pl.col(counted).list.len() >= threshold)
                .join(
                    self.frames_["fired"].filter(pl.col("kind") == kind),
                    left_on=keys,
                    right_on=["window", "src", "proto", "target"],
                    how="anti",
                )
            )
            fired = hits.select("window", pl.lit(kind).alias("kind"), "src", "proto", fixed)
            fired = fired.rename({fixed: "target"})
            self.frames_["fired"] = pl.concat([self.frames_["fired"], fired])
            for window_start, src, proto, target, values, firsts in hits.select(
                *keys, counted, "first"
            ).iter_rows():
                firsts = sorted(firsts)  # the time the threshold-th distinct value came
                explanation = {
                    "rule": f"one source to many {'destinations' if counted == 'dst' else 'ports'}",
                    "shape": "horizontal scan" if counted == "dst" else "vertical scan",
                    "distinct": len(values),
                    "threshold": threshold,
                    "window_start": window_start,
                    "window_s": self.window_s,
                    "examples": values[:_EXAMPLES],
                }
                tags = {"src": src, "proto": proto, fixed: target}
                out.append(Signal(firsts[threshold - 1], kind, tags, explanation))
        self.frames_["fired"] = self.frames_["fired"].filter(open_)
        return out

    def fingerprint(self) -> str:
        params = {
            "component": "flow_signals",
            "window_ns": self._window,
            "thresholds": [self.max_destinations, self.max_ports, self.max_unanswered],
            "unanswered_only": self.unanswered_only,
            "version": 2,
        }
        return fingerprint(params)

    def state_dict(self) -> State:
        """Known conversations and server ports, open fan-out windows, the clock."""
        state: State = {"fingerprint": self.fingerprint(), "late": self.late_}
        for name, frame in self.frames_.items():
            state.update(frame_to_state(frame, name))
        for name in ("origin_", "max_start_"):
            value = getattr(self, name)
            state[name.rstrip("_")] = np.array([] if value is None else [value], dtype=np.int64)
        return state

    def load_state(self, state: State) -> None:
        if state.get("fingerprint") != self.fingerprint():
            raise StateMismatchError("flow signal state fingerprint does not match")
        self.frames_ = {n: frame_from_state(state, n, s) for n, s in _SCHEMAS.items()}
        for name in ("origin", "max_start"):
            value = np.asarray(state[name])
            setattr(self, f"{name}_", int(value[0]) if value.size else None)
        self.late_ = int(state["late"])
