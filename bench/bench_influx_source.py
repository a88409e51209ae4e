"""Points per second read from a real influxd into memory: InfluxQLSource.pull beside
the official v1 client path, on the same data and window, in the same run.

The data is the bundled RIoT export replicated with shifted timestamps (26 copies:
517,088 points, 712 series). Both paths read the four measurements with one query
each over the same window; the figure is the best of ``--repeat`` runs.

* ``InfluxQLSource.pull``: chunked JSON, ``GROUP BY *``, into a
  :class:`~netsentry.model.Batch` (entity keys computed);
* the same requests with the bytes read and dropped (what the server and the wire cost);
* official: ``influxdb.InfluxDBClient.query(q, epoch="ns")`` then
  ``pandas.DataFrame(list(result.get_points()))`` (tags as columns, no entity keys).

Run: ``.venv/bin/python bench/bench_influx_source.py`` (needs influxd and, for the
second path, ``pip install influxdb pandas``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from influx_server import create_database, influxd, line_protocol, write
from netsentry.model import Batch
from netsentry.service.replay import RIOT_MEASUREMENTS, riot_export
from netsentry.sources.influxdb import InfluxQLSource
from timing import best_of

DAY_NS = 86_400_000_000_000


def replicated(copies: int) -> Batch:
    """The RIoT export ``copies`` times, copy k shifted by 4k days (the export spans < 4)."""
    frame = riot_export().frame
    shifted = [frame.with_columns(pl.col("time") + k * 4 * DAY_NS) for k in range(copies)]
    return Batch(pl.concat(shifted))


def transfer_only(source: InfluxQLSource, since: int, until: int) -> int:
    """The same requests as ``source.pull``, bytes read and dropped: the server's floor."""
    size = 0
    with httpx.Client(timeout=source.timeout_s) as client:
        for m in RIOT_MEASUREMENTS:
            params = {
                "db": source.database,
                "q": source.window_query(m, since, until),
                "epoch": "ns",
                "chunked": "true",
                "chunk_size": str(source.chunk_size),
            }
            with client.stream("GET", f"{source.url}/query", params=params) as response:
                size += sum(len(chunk) for chunk in response.iter_raw())
    return size


def official_path(url: str, database: str, since: int, until: int) -> Callable[[], Any] | None:
    try:
        import pandas as pd
        from influxdb import InfluxDBClient
    except ImportError:
        return None
    parts = urlsplit(url)
    client = InfluxDBClient(host=parts.hostname, port=parts.port, database=database, timeout=600)

    def run() -> Any:
        frames = []
        for m in RIOT_MEASUREMENTS:
            q = f'SELECT * FROM "{m}" WHERE time > {since} AND time <= {until}'
            result = client.query(q, epoch="ns")
            frames.append(pd.DataFrame(list(result.get_points())))
        return pd.concat(frames, ignore_index=True)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=26, help="RIoT copies (19,888 points each)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk-size", type=int, default=10_000)
    args = parser.parse_args()

    batch = replicated(args.copies)
    since, until = int(batch.frame["time"].min()) - 1, int(batch.frame["time"].max())
    n = len(batch)
    with tempfile.TemporaryDirectory() as tmp:
        server, url = influxd(Path(tmp))
        server.start()
        try:
            create_database(url, "bench")
            started = time.perf_counter()
            write(url, "bench", line_protocol(batch))
            print(f"wrote {n:,} points in {time.perf_counter() - started:.1f} s")

            source = InfluxQLSource(
                url, "bench", list(RIOT_MEASUREMENTS), chunk_size=args.chunk_size, timeout_s=600
            )
            ours, pulled = best_of(lambda: source.pull(since, until), args.repeat)
            assert len(pulled) == n, (len(pulled), n)
            print(f"InfluxQLSource.pull -> Batch    {ours:7.3f} s  {n / ours:>12,.0f} points/s")
            floor, size = best_of(lambda: transfer_only(source, since, until), args.repeat)
            print(
                f"  same requests, bytes only      {floor:7.3f} s  {n / floor:>12,.0f} points/s"
                f"  ({size / 1e6:.1f} MB on the wire)"
            )

            run = official_path(url, "bench", since, until)
            if run is None:
                print("official client path skipped: `influxdb` or `pandas` is not installed")
                return
            theirs, frame = best_of(run, args.repeat)
            assert len(frame) == n, (len(frame), n)
            print(f"influxdb client -> DataFrame   {theirs:7.3f} s  {n / theirs:>12,.0f} points/s")
            print(f"ratio (official time / ours): {theirs / ours:.2f}x")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
