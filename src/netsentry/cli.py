"""The `netsentry` command: demo, serve, check, ingest, config, anomalies, devices."""

from __future__ import annotations

import gzip
import json
import os
import secrets
import sys
from pathlib import Path
from typing import Any, BinaryIO

import click
from tqdm import tqdm

from netsentry.cli_common import db_option, settings_from
from netsentry.cli_devices import devices
from netsentry.config import Settings
from netsentry.ingest.errors import ParseResult
from netsentry.service.check import CheckReport, run_check
from netsentry.service.runtime import effective
from netsentry.store.sqlite import Store


@click.group()
def main() -> None:
    """netsentry: per-entity anomaly detection over network telemetry."""


def _print_report(report: CheckReport) -> None:
    click.echo(
        f"check {report.check_id}: {report.records} records, {report.judged} judged, "
        f"{report.anomalies} anomalies ({report.new_entities} new entities), "
        f"{report.resets} counter resets, {report.rebaselined} rebaselined, "
        f"{report.late} late, {report.duration_s:.3f} s"
    )


@main.command()
@click.option("--pull/--no-pull", default=True, help="Pull the configured sources first.")
@db_option
def check(pull: bool, db: str | None) -> None:
    """Pull the configured sources and check each ended period (or the inbox once)."""
    from netsentry.service.pull import HOUR_NS, catch_up
    from netsentry.sources.base import SourceError
    from netsentry.sources.configured import configured_sources

    settings = settings_from(db)
    store = Store(settings.db)
    detection = effective(settings, store)
    sources = configured_sources(settings) if pull else []
    try:
        reports = catch_up(
            store,
            sources,
            detection.frequency * HOUR_NS,
            lambda: run_check(store, effective(settings, store)),
            initial_lookback_ns=int(settings.initial_lookback_h * HOUR_NS),
        )
    except SourceError as err:
        click.echo(
            f"error: a source failed, later periods not checked (watermarks kept): {err}", err=True
        )
        sys.exit(1)
    for report in reports:
        _print_report(report)
    if not reports:
        click.echo("no check period has ended since the last check")


def _ingest_stream(
    store: Store, stream: BinaryIO, name: str, precision: str, bar: tqdm[Any]
) -> tuple[int, int]:
    from netsentry.ingest.lineprotocol import iter_line_chunks, parse_lines

    accepted = rejected = 0
    for first_line_no, lines in iter_line_chunks(stream):
        result = parse_lines(
            "\n".join(lines), precision=precision, source=name, first_line_no=first_line_no
        )
        accepted += _keep(store, result, name)
        rejected += len(result.errors)
        bar.update(sum(len(line) + 1 for line in lines))
    return accepted, rejected


def _keep(store: Store, result: ParseResult, name: str) -> int:
    for error in result.errors[:20]:
        click.echo(f"error: {error}", err=True)
    if len(result.errors) > 20:
        click.echo(f"... and {len(result.errors) - 20} more errors in {name}", err=True)
    store.record_errors("ingest", name, [str(e) for e in result.errors])
    return store.append(result.batch)


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "lp", "csv", "zeek", "eve", "pcap"]),
    default="auto",
    help="Line protocol, InfluxDB CSV, Zeek conn.log, Suricata EVE or a packet capture "
    "(auto: by file name).",
)
@click.option("--measurement", default=None, help="Measurement of a CSV without one.")
@click.option(
    "--precision",
    default="ns",
    show_default=True,
    type=click.Choice(["n", "ns", "u", "ms", "s", "m", "h"]),
)
@click.option(
    "--check/--no-check", "then_check", default=False, help="Run a check after ingesting."
)
@db_option
def ingest(
    paths: tuple[str, ...],
    fmt: str,
    measurement: str | None,
    precision: str,
    then_check: bool,
    db: str | None,
) -> None:
    """Ingest line protocol or InfluxDB CSV files ('-' reads line protocol from stdin)."""
    from netsentry.ingest.influx_csv import read_influx_csv

    settings = settings_from(db)
    store = Store(settings.db)
    accepted = rejected = 0
    for path in paths:
        kind = _flow_kind(path) if fmt == "auto" else fmt
        if kind in ("zeek", "eve", "pcap"):
            if not os.path.exists(path):
                raise click.FileError(path, "no such file")
            accepted += _ingest_flow_file(store, settings, path, kind)
            continue
        is_csv = fmt == "csv" or (fmt == "auto" and path.endswith((".csv", ".csv.gz")))
        if is_csv:
            if not os.path.exists(path):
                raise click.FileError(path, "no such file")
            with _open(path, "rt") as text:
                result = read_influx_csv(
                    text, measurement=measurement or _measurement_of(path), source_name=path
                )
            accepted += _keep(store, result, path)
            rejected += len(result.errors)
            continue
        if path == "-":
            with tqdm(desc="stdin", unit="B", unit_scale=True, disable=None) as bar:
                a, r = _ingest_stream(store, sys.stdin.buffer, "stdin", precision, bar)
        else:
            if not os.path.exists(path):
                raise click.FileError(path, "no such file")
            with (
                open(path, "rb") as stream,
                tqdm(
                    desc=Path(path).name,
                    total=os.path.getsize(path),
                    unit="B",
                    unit_scale=True,
                    disable=None,
                ) as bar,
            ):
                a, r = _ingest_stream(store, stream, path, precision, bar)
        accepted, rejected = accepted + a, rejected + r
    click.echo(f"ingested {accepted} records, rejected {rejected} malformed lines")
    if then_check:
        _print_report(run_check(store, effective(settings, store)))
    if rejected and not accepted:
        sys.exit(1)


def _flow_kind(path: str) -> str | None:
    name = Path(path).name.removesuffix(".gz").removesuffix(".xz")
    if name.endswith((".pcap", ".pcapng", ".cap")):
        return "pcap"
    if "conn" in name and name.endswith((".log", ".labeled")):
        return "zeek"
    if name.endswith((".json", ".jsonl")) and "eve" in name:
        return "eve"
    return None


def _flow_pipeline(settings: Settings) -> dict[str, Any]:
    """Pseudonymizer and sinks for flows, as the settings ask."""
    from netsentry.privacy.epochs import Pseudonymizer, parse_master_secret

    options: dict[str, Any] = {"interval_s": settings.flow_interval_s, "sinks": []}
    if settings.pseudonym_key is not None:
        master = parse_master_secret(settings.pseudonym_key.get_secret_value())
        options["pseudonymizer"] = Pseudonymizer(master, settings.pseudonym_period)
    if settings.redis_url:
        import redis

        from netsentry.store.redis_streams import FlowStreams

        options["sinks"].append(FlowStreams(redis.Redis.from_url(settings.redis_url)).add)
    if settings.parquet_dir is not None:
        from netsentry.store.parquet import ParquetStore

        options["sinks"].append(ParquetStore(settings.parquet_dir).write_flows)
    return options


def _ingest_flow_file(store: Store, settings: Settings, path: str, kind: str) -> int:
    """Flows → (pseudonyms) → signals and conversation series; returns the records."""
    from netsentry.flows import FlowReport, read_eve, read_zeek
    from netsentry.flows.pcap import PcapReport, read_pcap
    from netsentry.service.flow_ingest import ingest_flows

    options = _flow_pipeline(settings)
    report: FlowReport | PcapReport
    if kind == "pcap":
        report = PcapReport(source=path)
        flows = read_pcap(path, report=report)
    else:
        report = FlowReport(source=path)
        flows = (read_zeek if kind == "zeek" else read_eve)(path, report=report)
    with tqdm(desc=Path(path).name, unit=" flows", disable=None) as bar:

        def chunks() -> Any:
            for chunk in flows:
                bar.update(len(chunk.frame))
                yield chunk

        result = ingest_flows(store, chunks(), **options)
    errors = [str(e) for e in report.errors]
    for error in errors[:20]:
        click.echo(f"error: {error}", err=True)
    store.record_errors("ingest", path, errors)
    click.echo(
        f"{path}: {result.flows} flows ({report.error_count} malformed records, "
        f"{sum(report.skipped.values())} other records skipped) -> {result.records} "
        f"conversation records, {result.signals} signals"
        + (", addresses pseudonymized" if "pseudonymizer" in options else "")
    )
    return result.records


@main.command()
@click.option(
    "--listen",
    default="127.0.0.1:2055",
    show_default=True,
    help="host:port of the UDP socket NetFlow v5/v9 and IPFIX exporters send to.",
)
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="Stop after this many seconds without a datagram (default: run until ^C).",
)
@click.option(
    "--every",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between hand-overs of the collected flows to the store.",
)
@db_option
def collect(listen: str, idle_timeout: float | None, every: float, db: str | None) -> None:
    """Collect NetFlow/IPFIX on UDP and ingest the flows like a flow file."""
    from netsentry.flows.netflow import NetFlowCollector
    from netsentry.service.flow_ingest import ingest_flows

    settings = settings_from(db)
    store = Store(settings.db)
    host, _, port = listen.rpartition(":")
    options = _flow_pipeline(settings)
    with NetFlowCollector(host or "127.0.0.1", int(port)) as collector:
        click.echo(f"collecting NetFlow/IPFIX on {collector.address[0]}:{collector.address[1]}")
        for chunk in collector.stream(idle_timeout_s=idle_timeout, flush_s=every):
            result = ingest_flows(store, [chunk], flush=False, **options)
            click.echo(
                f"{result.flows} flows, {result.records} conversation records, "
                f"{result.signals} signals ({collector.report.dropped} datagrams dropped)"
            )
    click.echo("collector stopped")


def _open(path: str, mode: str) -> Any:
    """Open a file, decompressing ``.gz`` on the fly (never loaded whole)."""
    if path.endswith(".gz"):
        return gzip.open(path, mode)
    return open(path, mode)


def _measurement_of(path: str) -> str | None:
    """``data_tdmp_bytes_total.csv`` holds ``tdmp_bytes_total`` (the RIoT export's naming)."""
    stem = Path(path).name.removesuffix(".gz").removesuffix(".csv")
    return stem.removeprefix("data_") or None


@main.command()
@click.argument("addresses", nargs=-1)
@click.option("--epoch", type=int, default=None, help="Epoch id the addresses belong to.")
@click.option("--key", "keys", multiple=True, help="Entity key(s) to reverse (16 hex digits).")
@db_option
def depseudonymize(
    addresses: tuple[str, ...], epoch: int | None, keys: tuple[str, ...], db: str | None
) -> None:
    """Reverse pseudonyms (needs NETSENTRY_PSEUDONYM_KEY, the master secret)."""
    import polars as pl

    from netsentry.keys import parse_key
    from netsentry.privacy.epochs import Pseudonymizer, WrongKeyError, parse_master_secret
    from netsentry.store.sqlite import key_to_sql

    settings = settings_from(db)
    if settings.pseudonym_key is None:
        raise click.UsageError("NETSENTRY_PSEUDONYM_KEY (the master secret) is not set")
    master = parse_master_secret(settings.pseudonym_key.get_secret_value())
    pseudonymizer = Pseudonymizer(master, settings.pseudonym_period)
    if addresses and epoch is None:
        raise click.UsageError("--epoch is needed with addresses")
    try:
        if addresses:
            back = pseudonymizer.depseudonymize(
                pl.Series(addresses), pl.Series([epoch] * len(addresses))
            )
            for pseudonym, original in zip(addresses, back.addresses, strict=True):
                click.echo(f"{pseudonym} -> {original}")
        store = Store(settings.db)
        for text in keys:
            with store.read() as conn:
                row = conn.execute(
                    "SELECT e.src, e.dst, p.epoch, p.fingerprint FROM entities e "
                    "JOIN pseudonym_epochs p ON p.key = e.key WHERE e.key = ?",
                    (key_to_sql(parse_key(text.lower())),),
                ).fetchone()
            if row is None:
                raise click.UsageError(f"no pseudonymized entity {text}")
            src, dst, entity_epoch, fingerprint = row
            back = pseudonymizer.depseudonymize(
                pl.Series([src, dst]), pl.Series([entity_epoch] * 2), fingerprint=fingerprint
            )
            click.echo(
                f"{text}: src {src} -> {back.addresses[0]}, dst {dst} -> {back.addresses[1]} "
                f"(epoch {entity_epoch})"
            )
    except WrongKeyError as err:
        raise click.ClickException(str(err)) from err


@main.command()
@click.option(
    "--data",
    "source",
    default="riot",
    show_default=True,
    help="'riot' (the bundled export), 'store' (the inbox's recent window), or a path to "
    "ODDS http.csv[.gz] or an NSL-KDD directory (KDDTrain+_20Percent.txt, KDDTest+.txt).",
)
@click.option("--stream", is_flag=True, help="Prequential ROC-AUC over time instead.")
@click.option("--out", "out_dir", default="var/evaluation", show_default=True)
@click.option("--seed", default=0, show_default=True)
@db_option
def evaluate(source: str, stream: bool, out_dir: str, seed: int, db: str | None) -> None:
    """Rank the detectors per segment (EM/MV), or run them prequentially (--stream)."""
    from netsentry import evaluate as ev

    data: Any
    if source == "riot":
        from netsentry.service.replay import riot_export

        data = riot_export()
    elif source == "store":
        store = Store(settings_from(db).db)
        data = store.read_inbox(0, store.inbox_head())
        if len(data) == 0:
            raise click.UsageError("the store's inbox is empty: ingest data first")
    elif Path(source).is_dir():
        folder = Path(source)
        names = ev.nsl_kdd_field_names(folder / "Field Names.csv")
        data = ev.load_nsl_kdd(folder / "KDDTrain+_20Percent.txt", folder / "KDDTest+.txt", names)
    elif Path(source).exists():
        data = ev.load_odds_http(Path(source))
    else:
        raise click.BadParameter(f"no such data set: {source}", param_hint="--data")
    run = ev.evaluate_stream if stream else ev.evaluate
    report = run(data, Path(out_dir), seed=seed)
    for what, path in report.files.items():
        click.echo(f"wrote {path} ({what})")
    for segment, best in sorted(getattr(report, "best", {}).items()):
        click.echo(f"  {segment}: {best}")


@main.command()
@click.option("--tolerance", type=float, default=None, help="z threshold, 2..6.")
@click.option("--frequency", type=int, default=None, help="hours between checks, 1..168.")
@db_option
def config(tolerance: float | None, frequency: int | None, db: str | None) -> None:
    """Show the run-time settings, or change them (they apply at the next check)."""
    from netsentry.api.routes.config import ConfigUpdate

    settings = settings_from(db)
    store = Store(settings.db)
    try:
        update = ConfigUpdate(tolerance=tolerance, frequency=frequency)
    except Exception as err:
        raise click.BadParameter(str(err)) from err
    changes = update.model_dump(exclude_none=True)
    if changes:
        store.set_settings(changes, actor="cli")
    current = effective(settings, store)
    click.echo(json.dumps({"tolerance": current.tolerance, "frequency": current.frequency}))


@main.command()
@click.argument("measurement")
@click.option("--limit", default=20, show_default=True)
@db_option
def anomalies(measurement: str, limit: int, db: str | None) -> None:
    """List the newest open anomalies of a measurement."""
    from netsentry.store import queries

    store = Store(settings_from(db).db)
    with store.read() as conn:
        rows = queries.anomalies(conn, measurement, queries.VISIBLE, limit, 0)
    for row in rows:
        click.echo(json.dumps(row))


@main.command()
@click.option("--host", default=None, help="Bind address (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default 8000).")
@click.option("--schedule/--no-schedule", default=True, help="Run the periodic check.")
@db_option
def serve(host: str | None, port: int | None, schedule: bool, db: str | None) -> None:
    """Serve the API (and /write) and run a check every `frequency` hours."""
    settings = settings_from(db)
    _serve(settings, host or settings.host, port if port is not None else settings.port, schedule)


def _serve(settings: Settings, host: str, port: int, schedule: bool) -> None:
    import uvicorn

    from netsentry.api.app import create_app

    if settings.api_token is None:
        click.echo("note: NETSENTRY_API_TOKEN is not set: mutating routes will refuse", err=True)
    uvicorn.run(create_app(settings, schedule=schedule), host=host, port=port, log_level="info")


@main.command()
@click.option(
    "--serve/--no-serve",
    "then_serve",
    default=True,
    help="Serve the API on the results afterwards.",
)
@click.option("--port", type=int, default=None)
@db_option
def demo(then_serve: bool, port: int | None, db: str | None) -> None:
    """Replay the bundled RIoT export hour by hour, report, and serve the results."""
    from netsentry.service.replay import replay, riot_export

    settings = settings_from(db or "var/demo.sqlite")
    if settings.db.exists():
        for suffix in ("", "-wal", "-shm"):
            Path(f"{settings.db}{suffix}").unlink(missing_ok=True)
    store = Store(settings.db)
    batch = riot_export()
    click.echo(
        f"RIoT export: {len(batch)} records, {batch.frame['key'].n_unique()} entities, "
        f"{len(batch.measurements())} measurements; replaying hour by hour "
        f"(tolerance {settings.tolerance}, min_count {settings.min_count})"
    )
    hours = (batch.frame["time"] // 3_600_000_000_000).n_unique()
    with tqdm(total=hours, desc="checks", unit="h", disable=None) as bar:
        reports = replay(
            store, effective(settings, store), batch, progress=lambda _h, _r: bar.update(1)
        )
    _demo_summary(store, reports)
    if then_serve:
        if settings.api_token is None:
            token = secrets.token_urlsafe(24)
            settings = settings.model_copy(update={"api_token": _secret(token)})
            click.echo(
                f"API token for this demo session (set NETSENTRY_API_TOKEN to choose one): {token}"
            )
        port = port if port is not None else settings.port
        base = f"http://{settings.host}:{port}"
        click.echo(
            f"\nServing on {base}/  (routes: {base}/ · anomalies: "
            f"{base}/tdmp_bytes_total/anomalies · status: {base}/status · "
            f"docs: {base}/docs) — Ctrl-C to stop"
        )
        _serve(settings, settings.host, port, schedule=False)


def _secret(token: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(token)


def _demo_summary(store: Store, reports: list[CheckReport]) -> None:
    from netsentry.store import queries

    total = sum(r.anomalies for r in reports)
    new = sum(r.new_entities for r in reports)
    click.echo(
        f"\n{len(reports)} hourly checks, {sum(r.records for r in reports)} records: "
        f"{total} anomalies ({total - new} by z-score, {new} new entities), "
        f"{sum(r.resets for r in reports)} counter resets, "
        f"{sum(r.rebaselined for r in reports)} rebaselined entities"
    )
    with store.read() as db:
        for measurement in queries.measurements(db):
            rows = queries.anomalies(db, measurement, queries.VISIBLE, 100_000, 0)
            scored = [r for r in rows if r["detector"] == "zscore"]
            others: dict[str, int] = {}
            for row in rows:
                if row["detector"] != "zscore":
                    others[row["detector"]] = others.get(row["detector"], 0) + 1
            more = "".join(f", {n} {name.replace('_', ' ')}" for name, n in sorted(others.items()))
            click.echo(f"  {measurement}: {len(scored)} z-score anomalies{more}")
            for row in sorted(scored, key=lambda r: -(r["score"] or float("inf")))[:3]:
                e, t = row["explanation"], row["tags"]
                z = "inf" if e["z"] is None else f"{e['z']:.1f}"
                click.echo(
                    f"    {row['key']} {t.get('service')} {t.get('src')} -> "
                    f"{t.get('dst')}: {e['series']} {e['value']:.6g}, baseline "
                    f"{e['mean']:.4g} ± {e['std']:.3g} (n={e['n']}), z={z}"
                )
    click.echo(f"store: {store.path}")


main.add_command(devices)

if __name__ == "__main__":
    main()
