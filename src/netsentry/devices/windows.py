"""Rolling window statistics over packet records, exact and incremental.

Time is cut into *buckets* of ``bucket_ns`` from an origin (the first packet seen). A
*window* is ``window_buckets`` consecutive buckets; windows are *closed* every
``hop_buckets`` buckets (a hop shorter than the window makes them overlap). Per
bucket, the stream keeps exact moments (count, mean and M2, two-pass within a chunk,
combined with Chan's update of :mod:`netsentry.detect.moments`), so a window is the
merge of its buckets and pushing records in chunks of any size gives the windows of
one pass over all of them (up to rounding; tested against a naive reference).

The features of a window (:data:`FEATURES`; ``s`` = window length in seconds):

``packet_rate``       packets / s
``rate``              bytes · 8 / s (bit/s)
``peak_rate``         the largest bucket's bytes · 8 / bucket length (bit/s)
``iat_mean``          mean inter-arrival time of the window's packets (s); the first
                      packet's IAT is measured from the packet before it, in any window
``iat_std``           their standard deviation (population, ddof 0; s)
``size_mean``         mean RTP packet size (bytes)
``size_std``          its standard deviation (population; bytes)
``new_payload_type``  packets whose payload type is not among the known ones
``new_ssrc``          packets whose SSRC is not among the known ones

A window without packets has rates 0, size statistics 0, ``iat_mean`` = the window
length (a lower bound of the silence) and ``iat_std`` = 0. Arrivals must not go back
in time: an arrival earlier than the one before it is taken as simultaneous (IAT 0), and
one in a bucket that :meth:`RollingWindows.flush` already closed counts in the open one.
"Known" payload types and SSRCs are those of the device profile; before there is one
(``known_* = None``) nothing is new.

Besides the closed windows, :meth:`RollingWindows.push` returns the *trailing*
windows: for every bucket the chunk touched, the window ending with that bucket,
including the current one that is not complete yet. Their counts are lower bounds of
what the window will hold, so a rate or a new payload type that is already too high
there can be acted on at once (:mod:`netsentry.devices.monitor` does).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl

from netsentry.detect import moments
from netsentry.devices.packets import PacketRecords

__all__ = ["FEATURES", "MONOTONE_FEATURES", "RollingWindows", "WindowSpec", "WindowStats"]

FEATURES: tuple[str, ...] = (
    "packet_rate",
    "rate",
    "peak_rate",
    "iat_mean",
    "iat_std",
    "size_mean",
    "size_std",
    "new_payload_type",
    "new_ssrc",
)
#: Features that can only grow while a window fills: a trailing window's value is a
#: lower bound of the closed window's.
MONOTONE_FEATURES: tuple[str, ...] = (
    "packet_rate",
    "rate",
    "peak_rate",
    "new_payload_type",
    "new_ssrc",
)
#: Most buckets one push may span (about 7 hours of 100 ms buckets): a longer jump of
#: the clock is refused (restart the windows) rather than allocated.
MAX_SPAN_BUCKETS = 1 << 18
_SUMS = ("count", "bytes", "new_payload_type", "new_ssrc")
_MOMENTS = ("size", "iat")
Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut: bucket length, window length and hop, in buckets."""

    bucket_ns: int = 100_000_000
    window_buckets: int = 10
    hop_buckets: int = 5

    def __post_init__(self) -> None:
        if self.bucket_ns < 1_000:
            raise ValueError(f"bucket_ns must be at least 1000 (1 us), got {self.bucket_ns}")
        if self.window_buckets < 1 or not 1 <= self.hop_buckets <= self.window_buckets:
            raise ValueError(
                f"need window_buckets >= 1 and 1 <= hop_buckets <= window_buckets, got "
                f"{self.window_buckets}, {self.hop_buckets}"
            )

    @property
    def window_ns(self) -> int:
        return self.bucket_ns * self.window_buckets

    @property
    def hop_ns(self) -> int:
        return self.bucket_ns * self.hop_buckets

    def to_dict(self) -> dict[str, int]:
        return {
            "bucket_ns": self.bucket_ns,
            "window_buckets": self.window_buckets,
            "hop_buckets": self.hop_buckets,
        }


@dataclass(frozen=True)
class WindowStats:
    """Windows as columns: ``end_ns`` (exclusive end), ``packets``, ``bytes``,
    ``size_min``, ``size_max`` (0 when empty) and the :data:`FEATURES`."""

    frame: pl.DataFrame

    @classmethod
    def empty(cls) -> WindowStats:
        schema: dict[str, Any] = {"end_ns": pl.Int64, "packets": pl.Int64, "bytes": pl.Int64}
        schema |= {"size_min": pl.Int64, "size_max": pl.Int64}
        schema |= {name: pl.Float64 for name in FEATURES}
        return cls(pl.DataFrame(schema=schema))

    @classmethod
    def concat(cls, parts: Iterable[WindowStats]) -> WindowStats:
        frames = [p.frame for p in parts]
        return cls(pl.concat(frames)) if frames else cls.empty()

    def __len__(self) -> int:
        return self.frame.height

    def matrix(self, features: tuple[str, ...] = FEATURES) -> Floats:
        """The feature vectors, one row per window."""
        return self.frame.select(features).to_numpy().astype(np.float64).reshape(-1, len(features))


@dataclass
class _Buckets:
    """Per-bucket sums and moments of consecutive buckets ``first, first + 1, ...``."""

    first: int
    sums: dict[str, Ints]
    n: dict[str, Ints]
    mean: dict[str, Floats]
    m2: dict[str, Floats]
    low: Ints
    high: Ints

    @classmethod
    def zeros(cls, first: int, length: int) -> _Buckets:
        return cls(
            first,
            {k: np.zeros(length, np.int64) for k in _SUMS},
            {k: np.zeros(length, np.int64) for k in _MOMENTS},
            {k: np.zeros(length) for k in _MOMENTS},
            {k: np.zeros(length) for k in _MOMENTS},
            np.full(length, np.iinfo(np.int64).max),
            np.full(length, -1, np.int64),
        )

    def __len__(self) -> int:
        return len(self.low)

    def slice(self, start: int, stop: int) -> _Buckets:
        """Buckets ``first + start .. first + stop - 1``."""
        return _Buckets(
            self.first + start,
            {k: v[start:stop].copy() for k, v in self.sums.items()},
            {k: v[start:stop].copy() for k, v in self.n.items()},
            {k: v[start:stop].copy() for k, v in self.mean.items()},
            {k: v[start:stop].copy() for k, v in self.m2.items()},
            self.low[start:stop].copy(),
            self.high[start:stop].copy(),
        )

    def extend(self, other: _Buckets) -> _Buckets:
        """These buckets followed by ``other``, whose first bucket may overlap our last
        (the bucket in progress): the overlapping bucket is merged."""
        overlap = len(self) - (other.first - self.first)
        if not 0 <= overlap <= 1:
            raise ValueError("buckets must be consecutive")
        if overlap:
            last = len(self) - 1
            for k in _SUMS:
                other.sums[k][0] += self.sums[k][last]
            for k in _MOMENTS:
                n, mean, m2 = moments.merge(
                    self.n[k][last:],
                    self.mean[k][last:],
                    self.m2[k][last:],
                    other.n[k][:1],
                    other.mean[k][:1],
                    other.m2[k][:1],
                )
                other.n[k][0], other.mean[k][0], other.m2[k][0] = n[0], mean[0], m2[0]
            other.low[0] = min(other.low[0], self.low[last])
            other.high[0] = max(other.high[0], self.high[last])
        head = self.slice(0, len(self) - overlap)
        cat = np.concatenate
        return _Buckets(
            head.first,
            {k: cat([head.sums[k], other.sums[k]]) for k in _SUMS},
            {k: cat([head.n[k], other.n[k]]) for k in _MOMENTS},
            {k: cat([head.mean[k], other.mean[k]]) for k in _MOMENTS},
            {k: cat([head.m2[k], other.m2[k]]) for k in _MOMENTS},
            cat([head.low, other.low]),
            cat([head.high, other.high]),
        )


def _grouped_moments(where: Ints, values: Floats, length: int) -> tuple[Ints, Floats, Floats]:
    """Count, mean and M2 of ``values`` grouped by bucket position (two passes)."""
    n = np.bincount(where, minlength=length).astype(np.int64)
    total = np.bincount(where, weights=values, minlength=length)
    mean: Floats = np.divide(total, n, out=np.zeros(length), where=n > 0)
    squares = (values - mean[where]) ** 2
    m2 = np.asarray(np.bincount(where, weights=squares, minlength=length), dtype=np.float64)
    return n, mean, m2


def _bucketize(
    records: PacketRecords,
    arrival: Ints,
    where: Ints,
    first: int,
    length: int,
    previous_ns: int | None,
    known_payload_types: frozenset[int] | None,
    known_ssrcs: frozenset[int] | None,
) -> _Buckets:
    out = _Buckets.zeros(first, length)
    size = records.size.astype(np.int64)
    out.sums["count"] = np.bincount(where, minlength=length).astype(np.int64)
    out.sums["bytes"] = np.bincount(where, weights=size, minlength=length).astype(np.int64)
    if known_payload_types is not None:
        new = ~np.isin(records.payload_type, np.fromiter(known_payload_types, np.int16))
        out.sums["new_payload_type"] = np.bincount(where, weights=new, minlength=length).astype(
            np.int64
        )
    if known_ssrcs is not None:
        new = ~np.isin(records.ssrc, np.fromiter(known_ssrcs, np.uint32))
        out.sums["new_ssrc"] = np.bincount(where, weights=new, minlength=length).astype(np.int64)
    out.n["size"], out.mean["size"], out.m2["size"] = _grouped_moments(
        where, size.astype(np.float64), length
    )
    before = np.concatenate([[arrival[0] if previous_ns is None else previous_ns], arrival[:-1]])
    iat = (arrival - before).astype(np.float64) / 1e9
    has_iat = np.ones(len(arrival), dtype=bool)
    has_iat[0] = previous_ns is not None
    out.n["iat"], out.mean["iat"], out.m2["iat"] = _grouped_moments(
        where[has_iat], iat[has_iat], length
    )
    starts = np.flatnonzero(np.r_[True, where[1:] != where[:-1]])
    out.low[where[starts]] = np.minimum.reduceat(size, starts)
    out.high[where[starts]] = np.maximum.reduceat(size, starts)
    return out


def _windows(buckets: _Buckets, ends: Ints, spec: WindowSpec) -> pl.DataFrame:
    """The windows ending with the buckets at positions ``ends`` of ``buckets``."""
    w = spec.window_buckets
    sums = {k: np.zeros(len(ends), np.int64) for k in _SUMS}
    n = {k: np.zeros(len(ends), np.int64) for k in _MOMENTS}
    mean = {k: np.zeros(len(ends)) for k in _MOMENTS}
    m2 = {k: np.zeros(len(ends)) for k in _MOMENTS}
    low = np.full(len(ends), np.iinfo(np.int64).max)
    high = np.full(len(ends), -1, np.int64)
    peak = np.zeros(len(ends), np.int64)
    for offset in range(w - 1, -1, -1):  # oldest bucket first, as one pass would go
        at = ends - offset
        for k in _SUMS:
            sums[k] += buckets.sums[k][at]
        for k in _MOMENTS:
            n[k], mean[k], m2[k] = moments.merge(
                n[k], mean[k], m2[k], buckets.n[k][at], buckets.mean[k][at], buckets.m2[k][at]
            )
        low = np.minimum(low, buckets.low[at])
        high = np.maximum(high, buckets.high[at])
        peak = np.maximum(peak, buckets.sums["bytes"][at])
    seconds = spec.window_ns / 1e9

    def spread(k: str) -> Floats:
        return np.sqrt(np.divide(m2[k], n[k], out=np.zeros(len(ends)), where=n[k] > 0))

    empty = sums["count"] == 0
    return pl.DataFrame(
        {
            "end_ns": (buckets.first + ends + 1).astype(np.int64),  # bucket numbers for now
            "packets": sums["count"],
            "bytes": sums["bytes"],
            "size_min": np.where(empty, 0, low),
            "size_max": np.where(empty, 0, high),
            "packet_rate": sums["count"] / seconds,
            "rate": sums["bytes"] * 8.0 / seconds,
            "peak_rate": peak * 8.0 / (spec.bucket_ns / 1e9),
            "iat_mean": np.where(n["iat"] > 0, mean["iat"], seconds),
            "iat_std": spread("iat"),
            "size_mean": mean["size"],
            "size_std": spread("size"),
            "new_payload_type": sums["new_payload_type"].astype(np.float64),
            "new_ssrc": sums["new_ssrc"].astype(np.float64),
        }
    )


@dataclass
class RollingWindows:
    """Incremental windows over a stream of packet records (see the module docs).

    >>> from netsentry.devices.video import VideoSource
    >>> stream = RollingWindows(WindowSpec(bucket_ns=100_000_000, window_buckets=10))
    >>> closed, _ = stream.push(VideoSource(seed=1).records(10.0))
    >>> len(closed), round(float(closed.frame["packet_rate"].mean()))
    (18, 139)
    """

    spec: WindowSpec = field(default_factory=WindowSpec)
    known_payload_types: frozenset[int] | None = None
    known_ssrcs: frozenset[int] | None = None
    origin_ns: int | None = None
    last_arrival_ns: int | None = None
    _history: _Buckets | None = None  # the last window_buckets buckets, the newest open

    def push(self, records: PacketRecords) -> tuple[WindowStats, WindowStats]:
        """Add records (in arrival order); return the windows closed by them, and the
        trailing window of every bucket they touched (the last one still open)."""
        if not len(records):
            return WindowStats.empty(), WindowStats.empty()
        arrival = np.maximum.accumulate(records.arrival_ns.astype(np.int64))
        if self.last_arrival_ns is not None:
            arrival = np.maximum(arrival, self.last_arrival_ns)
        if self.origin_ns is None:
            self.origin_ns = int(arrival[0])
        history = self._history_or_empty()
        current = history.first + len(history) - 1
        # an arrival stamped before a flush closed its bucket counts in the open bucket
        bucket = np.maximum((arrival - self.origin_ns) // self.spec.bucket_ns, current)
        span = int(bucket[-1]) - current + 1
        if span > MAX_SPAN_BUCKETS:
            raise ValueError(
                f"arrival at {int(arrival[-1])} ns is {span} buckets after the window in "
                f"progress (more than {MAX_SPAN_BUCKETS}): restart the windows"
            )
        chunk = _bucketize(
            records,
            arrival,
            bucket - current,
            current,
            span,
            self.last_arrival_ns,
            self.known_payload_types,
            self.known_ssrcs,
        )
        self.last_arrival_ns = int(arrival[-1])
        return self._advance(history.extend(chunk), current, int(bucket[-1]), trailing=True)

    def flush(self, now_ns: int) -> WindowStats:
        """Close the windows that end by ``now_ns`` (for a stream that went quiet)."""
        if self.origin_ns is None:
            return WindowStats.empty()
        history = self._history_or_empty()
        current = history.first + len(history) - 1
        now_bucket = (now_ns - self.origin_ns) // self.spec.bucket_ns
        if now_bucket <= current:
            return WindowStats.empty()
        if now_bucket - current > MAX_SPAN_BUCKETS:
            raise ValueError(f"flush at {now_ns} ns is too far ahead: restart the windows")
        gap = _Buckets.zeros(current + 1, now_bucket - current)
        closed, _ = self._advance(history.extend(gap), current, now_bucket, trailing=False)
        return closed

    def restart(self) -> None:
        """Forget the stream (a new origin at the next packet)."""
        self.origin_ns = self.last_arrival_ns = None
        self._history = None

    def _history_or_empty(self) -> _Buckets:
        if self._history is None:
            # buckets before the origin are empty; windows reaching before it are not closed
            self._history = _Buckets.zeros(
                -(self.spec.window_buckets - 1), self.spec.window_buckets
            )
        return self._history

    def _advance(
        self, buckets: _Buckets, was_open: int, now_open: int, trailing: bool
    ) -> tuple[WindowStats, WindowStats]:
        """Buckets ``was_open .. now_open - 1`` are complete now: close their windows."""
        w, hop = self.spec.window_buckets, self.spec.hop_buckets
        complete = np.arange(max(was_open, w - 1), now_open)
        closed = self._stats(buckets, complete[(complete + 1) % hop == 0])
        touched = np.arange(max(was_open, w - 1), now_open + 1)
        tail = self._stats(buckets, touched) if trailing else WindowStats.empty()
        self._history = buckets.slice(len(buckets) - w, len(buckets))
        return closed, tail

    def _stats(self, buckets: _Buckets, numbers: Ints) -> WindowStats:
        if not len(numbers):
            return WindowStats.empty()
        frame = _windows(buckets, numbers - buckets.first, self.spec)
        assert self.origin_ns is not None
        end = pl.col("end_ns") * self.spec.bucket_ns + self.origin_ns
        return WindowStats(frame.with_columns(end.cast(pl.Int64).alias("end_ns")))
