"""A simulated video encoder: frames in a GOP pattern, packetised into RTP.

Frame ``k`` is captured at ``k / frame_rate`` seconds and leaves the encoder a little
later (``frame_jitter_s``, the standard deviation of a normal delay clipped to a
quarter of the frame interval, so frames keep their order). Every ``gop``-th frame is
an I-frame of about ``i_frame_bytes``, the others are P-frames of about
``p_frame_bytes``; each size is drawn with a log-normal spread ``size_cv``. A frame is
cut into RTP packets of at most ``mtu`` bytes (the 12-byte header included), sent
``packet_gap_s`` apart; the last one has the marker bit. Every packet of a frame has
the frame's RTP timestamp, ``capture time · clock_rate`` (90 kHz for video) from a
random start; sequence numbers and timestamps start at random values (RFC 3550 5.1).

Misbehaviour is injected over a span of stream time (seconds since the start):

* :class:`Burst`: extra packets at ``rate_pps``, of ``size`` bytes;
* :class:`SizeChange`: every packet's payload scaled by ``factor``;
* :class:`Jitter`: every packet delayed by an exponential delay of mean ``mean_s``
  (packets may overtake each other, as on a congested path);
* :class:`NewPayloadType`: a ``fraction`` of the packets carry another payload type.

The source is seeded and stateful: :meth:`VideoSource.schedule` continues where the
last call stopped, so a long stream can be generated in pieces. Each kind of random
draw has its own generator, so the stream does not depend on how it is cut into calls
(with misbehaviour: as long as at most one of each kind is active).
:meth:`VideoSource.records` turns a schedule into
:class:`~netsentry.devices.packets.PacketRecords` as if received without delay (for
fast simulation), :meth:`VideoSource.packets` into RTP bytes for a real sender.

>>> s = VideoSource(frame_rate=30, gop=30, seed=3).schedule(2.0)
>>> int(s.frame.max()) + 1, int((s.marker & s.keyframe).sum()), int(s.size.max())
(60, 2, 1200)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from netsentry.devices.packets import PacketRecords
from netsentry.devices.rtp import HEADER_SIZE, RTCP_CONFLICT, build

__all__ = [
    "Burst",
    "Jitter",
    "Misbehaviour",
    "NewPayloadType",
    "Packet",
    "Schedule",
    "SizeChange",
    "VideoSource",
]


@dataclass(frozen=True)
class Burst:
    """Extra packets at ``rate_pps`` of ``size`` bytes, from ``start_s`` for ``duration_s``."""

    start_s: float
    duration_s: float
    rate_pps: float = 2000.0
    size: int = 1200


@dataclass(frozen=True)
class SizeChange:
    """Every packet's payload scaled by ``factor`` (at least 1 byte, at most the MTU)."""

    start_s: float
    duration_s: float
    factor: float = 0.5


@dataclass(frozen=True)
class Jitter:
    """Every packet delayed by an exponential delay of mean ``mean_s``."""

    start_s: float
    duration_s: float
    mean_s: float = 0.02


@dataclass(frozen=True)
class NewPayloadType:
    """A ``fraction`` of the packets carry ``payload_type`` instead of the usual one."""

    start_s: float
    duration_s: float
    payload_type: int = 97
    fraction: float = 1.0


Misbehaviour = Burst | SizeChange | Jitter | NewPayloadType


@dataclass(frozen=True)
class Schedule:
    """Packets to send, in send order: offsets from the stream start (s) and headers.

    ``frame`` is the frame number (-1 for a burst's extra packets), ``keyframe`` marks
    the packets of I-frames and ``anomalous`` those a misbehaviour added or changed.
    """

    send_s: npt.NDArray[np.float64]
    size: npt.NDArray[np.int64]
    payload_type: npt.NDArray[np.int64]
    ssrc: npt.NDArray[np.int64]
    timestamp: npt.NDArray[np.int64]
    marker: npt.NDArray[np.bool_]
    sequence: npt.NDArray[np.int64]
    frame: npt.NDArray[np.int64]
    keyframe: npt.NDArray[np.bool_]
    anomalous: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.send_s)


class Packet(NamedTuple):
    """One RTP packet to send ``send_s`` seconds after the stream started."""

    send_s: float
    data: bytes
    anomalous: bool


def _during(m: Misbehaviour, t: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.asarray((t >= m.start_s) & (t < m.start_s + m.duration_s))


class VideoSource:
    """A seeded simulated video encoder (see the module documentation)."""

    def __init__(
        self,
        *,
        frame_rate: float = 30.0,
        gop: int = 30,
        i_frame_bytes: int = 30_000,
        p_frame_bytes: int = 4_000,
        size_cv: float = 0.1,
        mtu: int = 1200,
        payload_type: int = 96,
        clock_rate: int = 90_000,
        frame_jitter_s: float = 0.001,
        packet_gap_s: float = 0.0002,
        ssrc: int | None = None,
        seed: int = 0,
    ) -> None:
        if frame_rate <= 0 or gop < 1 or clock_rate <= 0:
            raise ValueError("frame_rate, gop and clock_rate must be positive")
        if mtu <= HEADER_SIZE:
            raise ValueError(f"mtu must exceed the {HEADER_SIZE}-byte RTP header, got {mtu}")
        if not 0 <= payload_type <= 127 or payload_type in RTCP_CONFLICT:
            raise ValueError(f"payload type must be in 0..127 and not 72..76, got {payload_type}")
        if min(i_frame_bytes, p_frame_bytes) < 1 or size_cv < 0 or frame_jitter_s < 0:
            raise ValueError("frame sizes must be positive, size_cv and frame_jitter_s >= 0")
        if (
            packet_gap_s < 0
            or packet_gap_s * (i_frame_bytes / (mtu - HEADER_SIZE)) > 1 / frame_rate
        ):
            raise ValueError("packet_gap_s must be >= 0 and an I-frame must fit in its interval")
        self.frame_rate, self.gop, self.mtu, self.clock_rate = frame_rate, gop, mtu, clock_rate
        self.i_frame_bytes, self.p_frame_bytes, self.size_cv = i_frame_bytes, p_frame_bytes, size_cv
        self.payload_type, self.frame_jitter_s, self.packet_gap_s = (
            payload_type,
            frame_jitter_s,
            packet_gap_s,
        )
        # one generator per kind of draw, so cutting the stream into calls changes nothing
        start, delay, size, fraction, jitter, payload = np.random.SeedSequence(seed).spawn(6)
        first = np.random.default_rng(start)
        self.ssrc = int(first.integers(0, 2**32)) if ssrc is None else ssrc
        self._timestamp0 = int(first.integers(0, 2**32))
        self._sequence = int(first.integers(0, 2**16))
        self._delay_rng, self._size_rng = np.random.default_rng(delay), np.random.default_rng(size)
        self._fraction_rng = np.random.default_rng(fraction)
        self._jitter_rng = np.random.default_rng(jitter)
        self._payload_rng = np.random.default_rng(payload)
        self._next_frame = 0
        self._misbehaviour: list[Misbehaviour] = []

    @property
    def elapsed_s(self) -> float:
        """Stream time up to which packets have been scheduled."""
        return self._next_frame / self.frame_rate

    def inject(self, misbehaviour: Misbehaviour) -> None:
        """Misbehave over a span of stream time (it may start in the past or the future)."""
        if misbehaviour.duration_s <= 0:
            raise ValueError(f"duration_s must be positive: {misbehaviour}")
        self._misbehaviour.append(misbehaviour)

    def schedule(self, duration_s: float) -> Schedule:
        """The packets of the next ``duration_s`` seconds of stream, in send order."""
        rate = self.frame_rate
        begin = self.elapsed_s
        end = int(np.floor((begin + duration_s) * rate + 1e-9))
        frames = np.arange(self._next_frame, max(end, self._next_frame), dtype=np.int64)
        self._next_frame = int(frames[-1]) + 1 if len(frames) else self._next_frame
        capture = frames / rate
        delay = np.clip(self._delay_rng.normal(0.0, self.frame_jitter_s, len(frames)), 0, None)
        leave = capture + np.minimum(delay, 0.25 / rate)
        keyframe = frames % self.gop == 0
        mean = np.where(keyframe, self.i_frame_bytes, self.p_frame_bytes)
        spread = np.exp(self._size_rng.normal(-(self.size_cv**2) / 2, self.size_cv, len(frames)))
        frame_bytes = np.maximum(1, np.round(mean * spread)).astype(np.int64)
        room = self.mtu - HEADER_SIZE
        count = -(-frame_bytes // room)
        owner = np.repeat(np.arange(len(frames)), count)
        index = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
        last = index == count[owner] - 1
        payload = np.where(last, frame_bytes[owner] - index * room, room)
        send = leave[owner] + index * self.packet_gap_s
        stamp = (self._timestamp0 + np.round(capture * self.clock_rate).astype(np.int64)) % 2**32
        out = {
            "send_s": send,
            "payload": payload,
            "payload_type": np.full(len(owner), self.payload_type),
            "timestamp": stamp[owner],
            "marker": last,
            "frame": frames[owner],
            "keyframe": keyframe[owner],
            "anomalous": np.zeros(len(owner), dtype=bool),
        }
        return self._misbehave(out, begin, self.elapsed_s)

    def _misbehave(self, out: dict[str, Any], begin: float, finish: float) -> Schedule:
        """Apply the misbehaviour to the packets of stream time ``[begin, finish)``."""
        for burst in self._misbehaviour:
            if not isinstance(burst, Burst):
                continue
            lo = max(burst.start_s, begin)
            hi = min(burst.start_s + burst.duration_s, finish)
            if hi <= lo:
                continue
            ticks = np.arange(np.ceil(lo * burst.rate_pps), np.ceil(hi * burst.rate_pps))
            times = ticks / burst.rate_pps
            frame = np.floor(times * self.frame_rate)
            extra = {
                "send_s": times,
                "payload": np.full(len(times), max(1, min(burst.size, self.mtu) - HEADER_SIZE)),
                "payload_type": np.full(len(times), self.payload_type),
                "timestamp": (
                    self._timestamp0 + np.round(frame / self.frame_rate * self.clock_rate)
                ).astype(np.int64)
                % 2**32,
                "marker": np.zeros(len(times), dtype=bool),
                "frame": np.full(len(times), -1),
                "keyframe": np.zeros(len(times), dtype=bool),
                "anomalous": np.ones(len(times), dtype=bool),
            }
            out = {k: np.concatenate([out[k], extra[k]]) for k in out}
        order = np.argsort(out["send_s"], kind="stable")
        out = {k: v[order] for k, v in out.items()}
        t = out["send_s"]
        sequence = (self._sequence + np.arange(len(t))) % 2**16
        self._sequence = (self._sequence + len(t)) % 2**16
        room = self.mtu - HEADER_SIZE
        delay = np.zeros(len(t))
        for m in self._misbehaviour:
            hit = _during(m, t)
            if isinstance(m, Burst):
                continue
            if isinstance(m, SizeChange):
                scaled = np.clip(np.round(out["payload"] * m.factor), 1, room).astype(np.int64)
                out["payload"] = np.where(hit, scaled, out["payload"])
            elif isinstance(m, NewPayloadType):
                hit &= self._fraction_rng.random(len(t)) < m.fraction
                out["payload_type"] = np.where(hit, m.payload_type, out["payload_type"])
            elif isinstance(m, Jitter):
                delay += np.where(hit, self._jitter_rng.exponential(m.mean_s, len(t)), 0.0)
            out["anomalous"] = out["anomalous"] | hit
        t = t + delay
        order = np.argsort(t, kind="stable")  # delayed packets are overtaken
        return Schedule(
            send_s=t[order],
            size=(out["payload"] + HEADER_SIZE)[order].astype(np.int64),
            payload_type=out["payload_type"][order].astype(np.int64),
            ssrc=np.full(len(t), self.ssrc, dtype=np.int64),
            timestamp=out["timestamp"][order].astype(np.int64),
            marker=out["marker"][order],
            sequence=sequence[order].astype(np.int64),
            frame=out["frame"][order].astype(np.int64),
            keyframe=out["keyframe"][order],
            anomalous=out["anomalous"][order],
        )

    def records(self, duration_s: float, t0_ns: int = 0) -> PacketRecords:
        """The next ``duration_s`` of stream as received records, arrival = send time."""
        s = self.schedule(duration_s)
        return PacketRecords(
            arrival_ns=t0_ns + np.round(s.send_s * 1e9).astype(np.int64),
            size=s.size.astype(np.int32),
            payload_type=s.payload_type.astype(np.int16),
            ssrc=s.ssrc.astype(np.uint32),
            rtp_timestamp=s.timestamp.astype(np.uint32),
            marker=s.marker,
            sequence=s.sequence.astype(np.uint16),
        )

    def packets(self, duration_s: float, *, zero_payload: bool = False) -> Iterator[Packet]:
        """The next ``duration_s`` of stream as RTP packets to send (payloads of zero
        bytes with ``zero_payload``: a capture of them compresses)."""
        s = self.schedule(duration_s)
        for i in range(len(s)):
            size = int(s.size[i]) - HEADER_SIZE
            yield Packet(
                float(s.send_s[i]),
                build(
                    payload_type=int(s.payload_type[i]),
                    sequence=int(s.sequence[i]),
                    timestamp=int(s.timestamp[i]),
                    ssrc=int(s.ssrc[i]),
                    marker=bool(s.marker[i]),
                    payload=bytes(size) if zero_payload else self._payload_rng.bytes(size),
                ),
                bool(s.anomalous[i]),
            )
