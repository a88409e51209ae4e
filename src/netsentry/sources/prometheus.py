"""Prometheus source: series read through ``/api/v1/query_range`` on a fixed time grid.

Each selector (e.g. ``tdmp_bytes_total`` or ``{__name__=~"tdmp_.*"}``) is evaluated at
the instants ``k * step`` of a grid anchored at the epoch. A window ``(since, until]``
asks for the grid instants inside it, so consecutive windows partition the grid: no
instant is read twice or skipped, whatever the window sizes. At each instant Prometheus
answers the latest sample within its lookback (5 min by default), the way Grafana and
Telegraf read it.

Mapping: ``__name__`` is the measurement; labels named like the key tags (``src``,
``dst``, ``srcp``, ``dstp``, ``proto``, ``service``, ``url``) become the entity's tags;
other labels (``job``, ``instance``…) are not part of the entity. ``*_total`` and
``*_created`` keep their meaning downstream (:mod:`netsentry.series`). NaN and ±Inf
samples (staleness markers, divisions by zero) are skipped and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import httpx

from netsentry.model import KEY_TAGS, Batch
from netsentry.sources.base import SourceError

MAX_POINTS_PER_QUERY = 11_000  # Prometheus refuses more than 11,000 points per series


@dataclass
class PrometheusSource:
    """Reads ``selectors`` from the Prometheus at ``url`` every ``step_s`` seconds."""

    url: str
    selectors: list[str]
    step_s: float = 60.0
    lateness_ns: int = 120_000_000_000
    timeout_s: float = 30.0
    name: str = ""
    skipped: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if not self.selectors:
            raise ValueError("PrometheusSource needs at least one selector")
        if self.step_s <= 0:
            raise ValueError(f"step_s must be positive, got {self.step_s}")
        self.url = self.url.rstrip("/")
        self.name = self.name or f"prometheus:{self.url}"
        self._step_ms = round(self.step_s * 1000)

    def grid(self, since_ns: int, until_ns: int) -> list[tuple[int, int]]:
        """(first, last) grid instants in ms of each query covering ``(since, until]``."""
        step = self._step_ms
        first = (since_ns // 1_000_000 // step + 1) * step
        last = until_ns // 1_000_000 // step * step
        if first * 1_000_000 <= since_ns:
            first += step
        spans, start = [], first
        while start <= last:
            end = min(last, start + (MAX_POINTS_PER_QUERY - 1) * step)
            spans.append((start, end))
            start = end + step
        return spans

    def pull(self, since_ns: int, until_ns: int) -> Batch:
        columns: dict[str, list[Any]] = {
            "time": [],
            "measurement": [],
            "value": [],
            **{t: [] for t in KEY_TAGS},
        }
        with httpx.Client(timeout=self.timeout_s) as client:
            for selector in self.selectors:
                for start_ms, end_ms in self.grid(since_ns, until_ns):
                    self._collect(client, selector, start_ms, end_ms, columns)
        tags = {t: columns[t] for t in KEY_TAGS}
        return Batch.from_columns(columns["time"], columns["measurement"], columns["value"], tags)

    def _query(
        self, client: httpx.Client, selector: str, start_ms: int, end_ms: int
    ) -> list[dict[str, Any]]:
        where = f"{self.url}/api/v1/query_range ({selector!r}, {start_ms}..{end_ms} ms)"
        params = {
            "query": selector,
            "start": f"{start_ms / 1000:.3f}",
            "end": f"{end_ms / 1000:.3f}",
            "step": f"{self._step_ms / 1000:.3f}",
        }
        try:
            response = client.get(f"{self.url}/api/v1/query_range", params=params)
        except httpx.HTTPError as err:
            raise SourceError(f"{where}: {type(err).__name__}: {err}") from err
        try:
            body = response.json()
        except ValueError as err:
            raise SourceError(
                f"{where}: HTTP {response.status_code}, not JSON: {response.text[:200]!r}"
            ) from err
        if (
            response.status_code != 200
            or not isinstance(body, dict)
            or body.get("status") != "success"
        ):
            error = body.get("error") if isinstance(body, dict) else None
            raise SourceError(f"{where}: HTTP {response.status_code}: {error or body!r}"[:500])
        data = body.get("data")
        if (
            not isinstance(data, dict)
            or data.get("resultType") != "matrix"
            or not isinstance(data.get("result"), list)
        ):
            raise SourceError(f"{where}: expected a matrix result, got {str(data)[:200]}")
        return data["result"]  # type: ignore[no-any-return]

    def _collect(
        self,
        client: httpx.Client,
        selector: str,
        start_ms: int,
        end_ms: int,
        columns: dict[str, list[Any]],
    ) -> None:
        for series in self._query(client, selector, start_ms, end_ms):
            try:
                labels, values = series["metric"], series["values"]
                name = labels["__name__"]
            except (KeyError, TypeError) as err:
                raise SourceError(
                    f"{self.url}: series without metric name or values: {str(series)[:200]}"
                ) from err
            tags = [labels.get(t, "") for t in KEY_TAGS]
            for stamp, text in values:
                value = float(text)
                if not math.isfinite(value):
                    self.skipped += 1
                    continue
                columns["time"].append(round(float(stamp) * 1000) * 1_000_000)
                columns["measurement"].append(name)
                columns["value"].append(value)
                for tag, tag_value in zip(KEY_TAGS, tags, strict=True):
                    columns[tag].append(tag_value)
