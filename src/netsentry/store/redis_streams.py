"""Near-time store: the recent flows of every conversation in Redis Streams.

Layout (``prefix`` default ``netsentry:flows``):

``{prefix}:conv:{key}``
    One stream per conversation, ``key`` its entity key as 16 hex digits (the key of
    its rows in :mod:`netsentry.flows.conversations`: tags ``src, dst, dstp, proto,
    service``). One entry per flow, each column a field (a null value: no field;
    ``labels`` = ``1`` when the flows carried label columns). Trimmed on every write
    with ``XADD MAXLEN ~ maxlen`` (Redis trims whole radix-tree nodes, so a stream
    keeps between ``maxlen`` and about ``maxlen + 100`` entries) and expiring
    ``ttl_s`` after its last write (``PEXPIRE``).
``{prefix}:index``
    The work queue: one entry per write to a conversation stream, ``conversation``,
    ``first``/``last`` (the IDs of its flows there) and ``count``. Trimmed with
    ``MAXLEN ~ index_maxlen``; it does not expire, so its consumer groups live on.

A write is pipelined (one round trip per :meth:`FlowStreams.add`); each conversation's
flows and their index entry are added by one Lua script, atomically: a reader never
sees an index entry without its flows. Entry IDs are arrival times (``*``): flows arrive
unordered, their event time is in ``start``.

Workers share the index through a consumer group (:class:`FlowStreamConsumer`):
``XREADGROUP`` hands each entry to one consumer; the consumer ``XACK`` s it when done.
Entries a consumer took and did not acknowledge within ``claim_idle_s`` (it crashed)
are taken over by the next consumer that polls (``XAUTOCLAIM``). Delivery is at least
once: a slow consumer's entry may be claimed and handled twice. Flows trimmed or
expired before a worker reads them are gone (a :class:`Delivery` says how many of its
``count`` remain). Connection failures raise :class:`StoreUnavailableError`; nothing
is acknowledged then. The two keys of a write lie in different hash slots: this is a
single-node (or Sentinel) layout, not a Redis Cluster one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import polars as pl
import redis

from netsentry.flows.conversations import CONVERSATION_TAGS
from netsentry.flows.schema import FLOW_SCHEMA, LABEL_SCHEMA, Flows
from netsentry.keys import format_key, with_entity_keys
from netsentry.model import KEY_TAGS

__all__ = ["Delivery", "FlowStreamConsumer", "FlowStreams", "StoreUnavailableError"]

#: Adds one conversation's flows and its index entry. KEYS: stream, index. ARGV:
#: maxlen, ttl_ms, index_maxlen, conversation, then per flow its field count and fields.
_ADD = """
local first, last, n, i = nil, nil, 0, 5
while i <= #ARGV do
  local width = tonumber(ARGV[i])
  last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(ARGV, i + 1, i + width))
  first = first or last
  n = n + 1
  i = i + 1 + width
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*',
  'conversation', ARGV[4], 'first', first, 'last', last, 'count', n)
"""
_INTS = {name for name, dtype in FLOW_SCHEMA.items() if dtype != pl.String}
_BATCH = 1000  # flows per script call: a call blocks the server while it runs


class StoreUnavailableError(RuntimeError):
    """Redis could not be reached; the operation did not happen (or not surely)."""


@dataclass(frozen=True)
class Delivery:
    """One index entry handed to a consumer, with the flows it announced.

    Attributes
    ----------
    id : str
        The index entry's ID, to acknowledge.
    conversation : int
        The conversation's entity key.
    count : int
        Flows written; ``len(flows)`` is smaller when some were trimmed or expired.
    flows : Flows
        The flows still stored, oldest first.
    """

    id: str
    conversation: int
    count: int
    flows: Flows


def conversation_keys(flows: Flows) -> pl.Series:
    """The conversation entity key (UInt64) of every flow."""
    tags = flows.frame.select(
        *(pl.col(t) for t in ("src", "dst", "proto", "service")),
        pl.col("dstp").cast(pl.String).fill_null(""),
        *(pl.lit("", pl.String).alias(t) for t in KEY_TAGS if t not in CONVERSATION_TAGS),
    )
    return with_entity_keys(tags)["key"]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FlowStreams:
    """Writes and reads the conversation streams (see the module documentation).

    Parameters
    ----------
    client : redis.Redis
        A client of the server (its ``retry`` and timeouts decide how long a failing
        call tries before :class:`StoreUnavailableError`).
    prefix : str
        Prefix of the keys.
    maxlen : int
        Flows kept per conversation (approximately, see above).
    ttl_s : float
        A conversation stream expires this long after its last write.
    index_maxlen : int
        Index entries kept (approximately).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "netsentry:flows",
        maxlen: int = 10_000,
        ttl_s: float = 86_400.0,
        index_maxlen: int = 1_000_000,
    ) -> None:
        if maxlen < 1 or index_maxlen < 1 or not ttl_s > 0:
            raise ValueError("maxlen, index_maxlen and ttl_s must be positive")
        self.client, self.prefix = client, prefix
        self.maxlen, self.ttl_ms, self.index_maxlen = maxlen, round(ttl_s * 1000), index_maxlen
        self.index = f"{prefix}:index"
        self._add = client.register_script(_ADD)

    def stream(self, conversation: int) -> str:
        """The key of a conversation's stream."""
        return f"{self.prefix}:conv:{format_key(conversation)}"

    @contextmanager
    def available(self) -> Iterator[None]:
        """Turn connection failures into :class:`StoreUnavailableError`."""
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            kwargs = self.client.connection_pool.connection_kwargs
            where = f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"
            raise StoreUnavailableError(f"Redis at {where} is unavailable: {exc}") from exc

    def add(self, flows: Flows) -> list[str]:
        """Store flows in their conversations' streams; returns the new index entry IDs."""
        if not len(flows):
            return []
        frame = flows.frame.with_columns(conversation_keys(flows).alias("_conversation"))
        labels = ["labels", "1"] if flows.has_labels else []
        columns = [c for c in frame.columns if c != "_conversation"]
        head = [str(self.maxlen), str(self.ttl_ms), str(self.index_maxlen)]
        pipe = self.client.pipeline(transaction=False)
        for (key,), group in frame.group_by("_conversation", maintain_order=True):
            stream, rows = self.stream(int(key)), group.select(columns).rows()
            for at in range(0, len(rows), _BATCH):
                args: list[Any] = [*head, format_key(int(key))]
                for row in rows[at : at + _BATCH]:
                    fields = [
                        f
                        for c, v in zip(columns, row, strict=True)
                        if v is not None
                        for f in (c, v)
                    ]
                    args += [len(fields) + len(labels), *fields, *labels]
                self._add(keys=[stream, self.index], args=args, client=pipe)
        with self.available():
            return [_text(i) for i in pipe.execute()]

    def flows(self, conversation: int, first: str = "-", last: str = "+") -> Flows:
        """A conversation's stored flows with IDs in ``[first, last]``, oldest first."""
        with self.available():
            entries: Any = self.client.xrange(self.stream(conversation), first, last)
        return self._decode(entries)

    def conversations(self) -> list[int]:
        """Entity keys of the conversations with a stream (a SCAN: for tests and tools)."""
        with self.available():
            keys = list(self.client.scan_iter(match=f"{self.prefix}:conv:*", count=1000))
        return sorted(int(_text(k).rsplit(":", 1)[1], 16) for k in keys)

    @staticmethod
    def _decode(entries: list[Any]) -> Flows:
        records = [{_text(k): _text(v) for k, v in fields.items()} for _, fields in entries]
        labelled = any("labels" in r for r in records)
        schema = {**FLOW_SCHEMA, **(LABEL_SCHEMA if labelled else {})}
        columns = {
            name: [
                (int(r[name]) if name in _INTS else r[name]) if name in r else None for r in records
            ]
            for name in schema
        }
        return Flows(pl.DataFrame(columns, schema=schema))


class FlowStreamConsumer:
    """One worker of a consumer group over the index stream.

    Parameters
    ----------
    store : FlowStreams
        The store whose index is consumed.
    group, name : str
        The consumer group (created at the index's start if missing) and this worker.
    claim_idle_s : float
        Entries another consumer took and has not acknowledged for this long are
        taken over.
    """

    def __init__(
        self, store: FlowStreams, group: str, name: str, *, claim_idle_s: float = 60.0
    ) -> None:
        self.store, self.group, self.name = store, group, name
        self.claim_idle_ms = round(claim_idle_s * 1000)
        self.lost = 0  # claimed entries that had been trimmed from the index
        with store.available():
            try:
                store.client.xgroup_create(store.index, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def poll(self, count: int = 16, block_s: float | None = None) -> list[Delivery]:
        """Up to ``count`` deliveries: stale ones of other consumers first, then new ones.

        ``block_s`` waits that long for a new entry when there is none (``None``: no wait).
        """
        store, client = self.store, self.store.client
        with store.available():
            claim: Any = client.xautoclaim(
                store.index, self.group, self.name, self.claim_idle_ms, "0-0", count=count
            )
            _, claimed, deleted = claim
            if deleted:  # trimmed from the index while pending: nothing to do
                client.xack(store.index, self.group, *deleted)
                self.lost += len(deleted)
            entries = list(claimed)
            if len(entries) < count:
                block = None if block_s is None else round(block_s * 1000)
                read: Any = client.xreadgroup(
                    self.group,
                    self.name,
                    {store.index: ">"},
                    count=count - len(entries),
                    block=block,
                )
                entries += [e for _, stream_entries in read for e in stream_entries]
        deliveries = []
        for entry_id, raw in entries:
            fields = {_text(k): _text(v) for k, v in raw.items()}
            key = int(fields["conversation"], 16)
            flows = store.flows(key, fields["first"], fields["last"])
            deliveries.append(Delivery(_text(entry_id), key, int(fields["count"]), flows))
        return deliveries

    def ack(self, deliveries: list[Delivery]) -> int:
        """Acknowledge handled deliveries; returns how many were still pending."""
        if not deliveries:
            return 0
        with self.store.available():
            return int(
                self.store.client.xack(self.store.index, self.group, *(d.id for d in deliveries))
            )

    def pending(self) -> int:
        """Entries of the group delivered and not acknowledged (by any consumer)."""
        with self.store.available():
            return int(self.store.client.xpending(self.store.index, self.group)["pending"])
