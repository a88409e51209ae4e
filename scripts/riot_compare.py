"""Compare netsentry's verdicts on the whole RIoT export with the reference's ``anomaly_diff``.

Run: ``.venv/bin/python scripts/riot_compare.py`` (prints the tables of docs/riot.md).
"""

from __future__ import annotations

import gzip
import sys
import tempfile
from importlib import resources
from pathlib import Path

import polars as pl

from netsentry.config import DetectionSettings
from netsentry.keys import format_key
from netsentry.model import KEY_TAGS
from netsentry.service.replay import RIOT_MEASUREMENTS, replay, riot_export
from netsentry.store.sqlite import Store, to_unsigned


def reference(measurement: str) -> pl.DataFrame:
    resource = resources.files("netsentry") / "data" / f"data_{measurement}.csv.gz"
    with resources.as_file(resource) as path, gzip.open(Path(path), "rb") as raw:
        frame = pl.read_csv(raw.read(), infer_schema_length=0)
    return frame.with_columns(
        time=pl.col("_time").str.to_datetime(time_unit="ns", time_zone="UTC").dt.epoch("ns"),
        anomaly_diff=pl.col("anomaly_diff").cast(pl.Int64),
        value=pl.col("_value").cast(pl.Float64),
    )


def main() -> int:
    settings = DetectionSettings()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "riot.sqlite")
        replay(store, settings, riot_export())
        with store.read() as db:
            ours = pl.DataFrame(
                db.execute(
                    "SELECT a.measurement, a.time, a.key, a.detector, a.value, "
                    "a.explanation FROM anomalies a"
                ).fetchall(),
                schema=["measurement", "time", "key", "detector", "value", "explanation"],
                orient="row",
            )
    ours = ours.with_columns(pl.Series("key", to_unsigned(ours["key"].to_numpy())))
    batch = riot_export().frame
    print("| measurement | reference anomaly_diff | netsentry z-score | new entities | both |")
    print("|---|---|---|---|---|")
    for m in RIOT_MEASUREMENTS:
        ref = reference(m).join(
            batch.filter(pl.col("measurement") == m).select("time", "key", *KEY_TAGS),
            on=["time", *KEY_TAGS],
        )
        flagged_ref = ref.filter(pl.col("anomaly_diff") == 1).select("time", "key")
        z = ours.filter((pl.col("measurement") == m) & (pl.col("detector") == "zscore"))
        new = ours.filter((pl.col("measurement") == m) & (pl.col("detector") == "new_entity"))
        both = flagged_ref.join(z.select("time", "key"), on=["time", "key"])
        print(f"| {m} | {flagged_ref.height} | {z.height} | {new.height} | {both.height} |")
    print()
    z_all = ours.filter(pl.col("detector") == "zscore")
    infinite = z_all.filter(pl.col("explanation").str.contains('"z": null'))
    print(
        f"netsentry z-score anomalies: {z_all.height}, of which {infinite.height} against a "
        f"zero-variance baseline; {z_all['key'].n_unique()} distinct entities"
    )
    print()
    for m in RIOT_MEASUREMENTS:
        ref = reference(m).join(
            batch.filter(pl.col("measurement") == m).select("time", "key", *KEY_TAGS),
            on=["time", *KEY_TAGS],
        )
        ref = ref.sort("key", "time").with_columns(
            prev_same=pl.col("value").shift(1).over("key"),
            seen_before=pl.int_range(pl.len()).over("key"),
        )
        rows = ref.filter(pl.col("anomaly_diff") == 1).sort("time")
        z = ours.filter((pl.col("measurement") == m) & (pl.col("detector") == "zscore"))
        print(f"### {m}: rows the reference flagged\n")
        print(
            "| time | entity | service | raw value | reference _value_diff "
            "| same entity's previous value | samples before | netsentry |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for r in rows.iter_rows(named=True):
            hit = z.filter((pl.col("time") == r["time"]) & (pl.col("key") == r["key"]))
            verdict = "flagged" if hit.height else "not flagged"
            prev = "none" if r["prev_same"] is None else f"{r['prev_same']:.6g}"
            print(
                f"| {r['_time']} | {format_key(r['key'])} | {r['service']} | {r['value']:.6g} "
                f"| {float(r['_value_diff']):.6g} | {prev} | {r['seen_before']} | {verdict} |"
            )
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
