"""Pulling sources into the inbox: windows, watermarks, and failures that lose nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from helpers import HOUR
from netsentry.model import Batch
from netsentry.service.pull import pull_sources, windows
from netsentry.sources.base import Source, SourceError
from netsentry.store.sqlite import Store


@dataclass
class Recorded:
    """A source over a fixed list of (time, value) points; fails on chosen windows."""

    points: list[tuple[int, float]]
    name: str = "recorded"
    lateness_ns: int = 0
    fail_at: set[int] = field(default_factory=set)
    calls: list[tuple[int, int]] = field(default_factory=list)

    def pull(self, since_ns: int, until_ns: int) -> Batch:
        self.calls.append((since_ns, until_ns))
        if len(self.calls) in self.fail_at:
            raise SourceError(f"window {since_ns}..{until_ns} unreachable")
        chosen = [(t, v) for t, v in self.points if since_ns < t <= until_ns]
        return Batch.from_columns(
            [t for t, _ in chosen],
            ["m"] * len(chosen),
            [v for _, v in chosen],
            {"src": ["a"] * len(chosen)},
        )


def test_windows_cover_the_span_exactly():
    assert windows(0, 10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert windows(5, 5, 4) == []


def test_points_land_once_with_their_watermark(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    source = Recorded([(h * HOUR, float(h)) for h in range(1, 11)])
    assert isinstance(source, Source)
    pull_sources(store, [source], now_ns=5 * HOUR, initial_lookback_ns=5 * HOUR)
    assert store.watermark("recorded") == 5 * HOUR
    pull_sources(store, [source], now_ns=10 * HOUR)
    frame = store.read_inbox(0, store.inbox_head()).frame
    assert frame["time"].to_list() == [h * HOUR for h in range(1, 11)]


def test_a_failed_window_keeps_what_came_before_and_resumes(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    source = Recorded([(h * HOUR, float(h)) for h in range(1, 11)], fail_at={4})
    with pytest.raises(SourceError, match="unreachable"):
        pull_sources(store, [source], now_ns=10 * HOUR, initial_lookback_ns=10 * HOUR)
    assert store.watermark("recorded") == 3 * HOUR  # three windows landed, not the fourth
    assert store.counters()["errors_source"] == 1
    pull_sources(store, [source], now_ns=10 * HOUR)
    frame = store.read_inbox(0, store.inbox_head()).frame
    assert frame["time"].to_list() == [h * HOUR for h in range(1, 11)]  # no gap, no repeat


def test_one_failing_source_does_not_stop_the_others(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    good = Recorded([(HOUR, 1.0)], name="good")
    bad = Recorded([(HOUR, 2.0)], name="bad", fail_at={1})
    with pytest.raises(SourceError, match="bad"):
        pull_sources(store, [bad, good], now_ns=2 * HOUR, initial_lookback_ns=2 * HOUR)
    assert store.watermark("good") == 2 * HOUR and store.watermark("bad") == 0
