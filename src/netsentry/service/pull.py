"""Pull every configured source into the inbox, one check period at a time.

Each window ``(watermark, until]`` lands in the inbox together with the advanced
watermark (one transaction), so a source that fails half-way keeps what it delivered
and resumes from there. If any source fails, :func:`pull_sources` raises after the
others have been pulled, and the caller must not run the check: a check over partial
data would judge later points as late and drop them, and the final state would then
depend on the outage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netsentry.service.check import CheckReport
from netsentry.sources.base import Source, SourceError
from netsentry.store.sqlite import Store

HOUR_NS = 3_600_000_000_000


@dataclass
class PullReport:
    source: str
    since_ns: int
    until_ns: int
    records: int


def windows(since_ns: int, until_ns: int, max_window_ns: int) -> list[tuple[int, int]]:
    """``(since, until]`` cut into consecutive windows of at most ``max_window_ns``."""
    out, start = [], since_ns
    while start < until_ns:
        end = min(until_ns, start + max_window_ns)
        out.append((start, end))
        start = end
    return out


def pull_sources(
    store: Store,
    sources: Sequence[Source],
    *,
    now_ns: int | None = None,
    until_ns: int | None = None,
    initial_lookback_ns: int = 24 * HOUR_NS,
    max_window_ns: int = HOUR_NS,
) -> list[PullReport]:
    """Land every source's new points in the inbox; raise if any source failed.

    Each source is read up to ``until_ns`` if given, else up to now minus its lateness.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    reports: list[PullReport] = []
    failures: list[str] = []
    for source in sources:
        until = now_ns - source.lateness_ns if until_ns is None else until_ns
        since = store.watermark(source.name) or (until - initial_lookback_ns)
        try:
            for start, end in windows(since, until, max_window_ns):
                batch = source.pull(start, end)
                store.append(batch, checkpoint=(source.name, end))
                reports.append(PullReport(source.name, start, end, len(batch)))
        except SourceError as err:
            failures.append(f"{source.name}: {err}")
    if failures:
        store.record_errors("source", "pull", failures)
        raise SourceError("; ".join(failures))
    return reports


def period_ends(since_ns: int, until_ns: int, period_ns: int) -> list[int]:
    """The period boundaries ``k * period`` with ``since < end <= until``."""
    first = (since_ns // period_ns + 1) * period_ns
    return list(range(first, until_ns + 1, period_ns))


def catch_up(
    store: Store,
    sources: Sequence[Source],
    period_ns: int,
    check: Callable[[], CheckReport],
    *,
    now_ns: int | None = None,
    initial_lookback_ns: int = 24 * HOUR_NS,
    max_window_ns: int = HOUR_NS,
) -> list[CheckReport]:
    """One check per check period that has ended, each over that period's points.

    Periods are aligned to the epoch (``k * period``), so which points a check sees
    never depends on when the scheduler woke up, nor on an outage: after a source comes
    back, the missed periods are pulled and checked one by one, in order, and the final
    state is the one an uninterrupted run reaches. Stops at the first period a source
    cannot deliver (``SourceError``), leaving later periods for the next attempt.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    if not sources:
        return [check()]
    lateness = max(source.lateness_ns for source in sources)
    end = (now_ns - lateness) // period_ns * period_ns
    start = (end - initial_lookback_ns) // period_ns * period_ns
    marks = [store.watermark(source.name) or start for source in sources]
    reports = []
    for boundary in period_ends(min(marks), end, period_ns):
        pull_sources(
            store,
            sources,
            now_ns=boundary,
            until_ns=boundary,
            initial_lookback_ns=boundary - start,
            max_window_ns=max_window_ns,
        )
        reports.append(check())
    return reports
