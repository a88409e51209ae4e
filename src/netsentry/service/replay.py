"""Replays the bundled RIoT export as if it arrived hour by hour, one check per hour."""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

from netsentry.config import DetectionSettings
from netsentry.ingest.influx_csv import read_influx_csv
from netsentry.model import Batch
from netsentry.service.check import CheckReport, run_check
from netsentry.store.sqlite import Store

HOUR_NS = 3_600_000_000_000
RIOT_MEASUREMENTS = (
    "tdmp_bytes_created",
    "tdmp_bytes_total",
    "tdmp_packets_created",
    "tdmp_packets_total",
)


def riot_export() -> Batch:
    """The four measurements of the bundled RIoT export as one Batch."""
    batches = []
    for measurement in RIOT_MEASUREMENTS:
        resource = resources.files("netsentry") / "data" / f"data_{measurement}.csv.gz"
        with resources.as_file(resource) as path, gzip.open(Path(path), "rt") as text:
            result = read_influx_csv(text, measurement=measurement, source_name=path.name)
        if result.errors:
            raise ValueError(f"bundled data is damaged: {result.errors[0]}")
        batches.append(result.batch)
    return Batch.concat(batches)


def hourly(batch: Batch) -> Iterator[tuple[int, Batch]]:
    hours = batch.frame["time"] // HOUR_NS
    for hour in sorted(hours.unique().to_list()):
        yield hour * HOUR_NS, Batch(batch.frame.filter(hours == hour))


def replay(
    store: Store,
    settings: DetectionSettings,
    batch: Batch,
    progress: Callable[[int, CheckReport], None] | None = None,
) -> list[CheckReport]:
    """Append each hour of ``batch`` to the inbox and run a check after it."""
    reports = []
    for hour_ns, chunk in hourly(batch):
        store.append(chunk)
        report = run_check(store, settings)
        reports.append(report)
        if progress is not None:
            progress(hour_ns, report)
    return reports
