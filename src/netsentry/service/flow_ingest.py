"""Flows into the service: pseudonymized first, then conversation series and rule signals.

For every chunk of flows a parser yields:

1. with a pseudonymization key configured, ``src`` and ``dst`` are replaced by their
   Crypto-PAn pseudonyms under the key of the flow's epoch, before anything is stored
   (:mod:`netsentry.privacy`);
2. the rule-based signals (new conversation, new server port, fan-out) become
   anomalies (detector ``signal:<kind>``, measurement ``conn_flows``);
3. the conversations' per-interval measurements land in the inbox as a Batch, for the
   z-score and the other detectors to judge at the next check.

The epoch of each pseudonymized conversation is recorded with its entity key, so a
holder of the master secret can reverse it (``netsentry depseudonymize --key``).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import polars as pl

from netsentry.flows import ConversationSeries, Flows, FlowSignals, Signal
from netsentry.keys import entity_key
from netsentry.model import Anomaly, Batch
from netsentry.privacy.epochs import Pseudonymizer, epoch_ids
from netsentry.service.states import anomaly_id
from netsentry.store.sqlite import Store, to_signed

SIGNAL_MEASUREMENT = "conn_flows"
INGEST_CHECK = 0  # check id of anomalies raised at ingest, not by a check


@dataclass
class FlowIngestReport:
    flows: int = 0
    records: int = 0
    signals: int = 0
    passed_through: int = 0


def signal_anomaly(signal: Signal) -> Anomaly:
    key = entity_key(signal.tags)
    detector = f"signal:{signal.kind}"
    value = next(
        (
            float(v)
            for v in signal.explanation.values()
            if isinstance(v, int | float) and not isinstance(v, bool)
        ),
        1.0,
    )
    return Anomaly(
        time=signal.time,
        measurement=SIGNAL_MEASUREMENT,
        key=key,
        value=value,
        score=math.nan,
        threshold=math.nan,
        detector=detector,
        explanation={"rule": signal.kind, **signal.explanation},
        tags=signal.tags,
        id=anomaly_id(detector, SIGNAL_MEASUREMENT, key, signal.time),
    )


def pseudonymize(flows: Flows, pseudonymizer: Pseudonymizer) -> tuple[Flows, int]:
    """Flows with pseudonymous ``src`` and ``dst``; and how many values were not addresses."""
    frame = flows.frame
    src = pseudonymizer.pseudonymize(frame["src"], frame["start"])
    dst = pseudonymizer.pseudonymize(frame["dst"], frame["start"])
    frame = frame.with_columns(src.addresses.alias("src"), dst.addresses.alias("dst"))
    return Flows(frame), src.passed_through + dst.passed_through


def _record_epochs(store: Store, batch: Batch, pseudonymizer: Pseudonymizer) -> None:
    """Entity key → epoch of its pseudonyms (an interval lies within one epoch)."""
    if len(batch) == 0:
        return
    epochs = epoch_ids(batch.frame["time"] - 1, pseudonymizer.period)
    rows = pl.DataFrame({"key": to_signed(batch.frame["key"].to_numpy()), "epoch": epochs})
    rows = rows.unique(subset=["key"])
    with store.transaction() as tx:
        tx.db.executemany(
            "INSERT OR IGNORE INTO pseudonym_epochs VALUES (?, ?, ?, ?)",
            [(k, pseudonymizer.period, e, pseudonymizer.fingerprint) for k, e in rows.iter_rows()],
        )


def _load(component: ConversationSeries | FlowSignals, store: Store, name: str) -> None:
    state, _ = store.load_state(name, "flows")
    if state is not None:
        component.load_state(state)


FlowSink = Callable[[Flows], object]


def ingest_flows(
    store: Store,
    chunks: Iterable[Flows],
    *,
    pseudonymizer: Pseudonymizer | None = None,
    flush: bool = True,
    interval_s: float = 3600.0,
    sinks: Sequence[FlowSink] = (),
) -> FlowIngestReport:
    """Run flow chunks through pseudonymization, signals and conversation series.

    ``sinks`` also receive every (pseudonymized) chunk: the Redis near-time store and
    the Parquet long-term store, when configured.
    """
    series, signals = ConversationSeries(interval_s=interval_s), FlowSignals()
    _load(series, store, "conversations")
    _load(signals, store, "signals")
    report = FlowIngestReport()
    anomalies: list[Anomaly] = []

    def land(batch: Batch) -> None:
        if pseudonymizer is not None:
            _record_epochs(store, batch, pseudonymizer)
        report.records += store.append(batch)

    for chunk in chunks:
        report.flows += len(chunk.frame)
        if pseudonymizer is not None:
            chunk, passed = pseudonymize(chunk, pseudonymizer)
            report.passed_through += passed
        for sink in sinks:
            sink(chunk)
        anomalies += [signal_anomaly(s) for s in signals.update(chunk)]
        land(series.update(chunk))
    if flush:
        land(series.flush())
    report.signals = len(anomalies)
    with store.transaction() as tx:
        tx.save_state("conversations", "flows", series.state_dict())
        tx.save_state("signals", "flows", signals.state_dict())
        tx.add_anomalies(_new(tx.db, anomalies), INGEST_CHECK)
        tx.bump({"flows_ingested": float(report.flows), "flow_signals": float(report.signals)})
    return report


def _new(db: sqlite3.Connection, anomalies: list[Anomaly]) -> list[Anomaly]:
    """Signals re-raised by re-ingesting the same file are not stored twice."""
    seen = {
        row[0] for row in db.execute("SELECT id FROM anomalies WHERE check_id = ?", (INGEST_CHECK,))
    }
    unique = {a.id: a for a in anomalies if a.id not in seen}
    return list(unique.values())
