"""Learning features of flows, as the seed prepared them for its sequence models.

Each flow's timestamp is replaced by the time since the previous flow of its
conversation (:data:`~netsentry.flows.conversations.CONVERSATION_TAGS`); that time
and the four counts (bytes and packets each way) are log-transformed and binned, so
each becomes a one-hot vector:

* ``x_log = log2(1 + x)``, with the time difference ``dt`` in milliseconds and the
  counts as they are;
* ``x_bin = min(floor(x_log), n_bins - 1)``: bin *i* holds ``2**i - 1 <= x < 2**(i+1) - 1``
  (with 32 bins: up to 4 GiB, 4 G packets, or 49 days between flows);
* ``x_0`` … ``x_{n_bins-1}``: the one-hot columns (UInt8). A value that is missing (a
  conversation's first flow has no ``dt``; Zeek may not know the bytes) has no bin
  (null) and all-zero one-hot columns.

Rows come sorted by conversation and start, so each conversation is one contiguous
sequence, ready to be cut into fixed-length windows.
"""

from __future__ import annotations

import polars as pl

from netsentry.flows.conversations import CONVERSATION_TAGS, conversation_rows
from netsentry.flows.schema import Flows
from netsentry.keys import with_entity_keys
from netsentry.model import KEY_TAGS

__all__ = ["FEATURES", "flow_features"]

#: The binned features, in the order of their columns.
FEATURES: tuple[str, ...] = ("dt", "bytes_out", "bytes_in", "packets_out", "packets_in")


def flow_features(
    flows: Flows,
    *,
    n_bins: int = 32,
    one_hot: bool = True,
    previous: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Per-flow learning features (see module doc).

    Parameters
    ----------
    flows : Flows
        The flows, in any order.
    n_bins : int
        Bins per feature; the last bin takes everything above.
    one_hot : bool
        Add the one-hot columns ``<feature>_<i>``.
    previous : polars.DataFrame, optional
        Columns ``CONVERSATION_TAGS`` and ``last_start`` (ns): the last flow start of
        each conversation before these flows, so that ``dt`` continues across chunks
        (:attr:`ConversationSeries.last_start_
        <netsentry.flows.conversations.ConversationSeries.last_start_>` has that form).

    Returns
    -------
    polars.DataFrame
        ``key`` (the conversation's entity key, as in the conversation Batches), the
        conversation tags, ``start``, ``dt_s`` and per feature ``<feature>_log``,
        ``<feature>_bin`` and the one-hot columns.

    Examples
    --------
    >>> import polars as pl
    >>> from netsentry.flows.schema import FLOW_SCHEMA, Flows
    >>> row = dict(src="10.0.0.1", dst="10.0.0.2", srcp=50000, dstp=53, proto="udp",
    ...            service="dns", bytes_out=40, bytes_in=200, packets_out=1,
    ...            packets_in=1, state="SF", source="doc")
    >>> flows = Flows(pl.DataFrame([dict(row, start=s, end=s) for s in (0, 1_000_000)],
    ...                            schema=FLOW_SCHEMA))
    >>> f = flow_features(flows, n_bins=8)
    >>> f["dt_bin"].to_list(), f["bytes_in_bin"].to_list(), f["bytes_in_7"].to_list()
    ([None, 1], [7, 7], [1, 1])
    """
    if n_bins < 1:
        raise ValueError("n_bins must be positive")
    tags = list(CONVERSATION_TAGS)
    rows = conversation_rows(flows).sort([*tags, "start"])
    before = pl.col("start").shift(1).over(tags)
    if previous is not None:
        last = previous.select(*tags, "last_start")
        rows = rows.join(last, on=tags, how="left", maintain_order="left")
        before = before.fill_null(pl.col("last_start"))
    rows = rows.with_columns((pl.col("start") - before).alias("dt_ns"))
    values = {
        "dt": pl.col("dt_ns") / 1_000_000,  # milliseconds
        **{f: pl.col(f) for f in FEATURES[1:]},
    }
    logs = [(1 + v.cast(pl.Float64)).log(2).alias(f"{f}_log") for f, v in values.items()]
    frame = rows.with_columns((pl.col("dt_ns") / 1e9).alias("dt_s"), *logs).with_columns(
        pl.col(f"{f}_log").floor().cast(pl.Int32).clip(0, n_bins - 1).alias(f"{f}_bin")
        for f in FEATURES
    )
    if one_hot:
        frame = frame.with_columns(
            (pl.col(f"{f}_bin") == i).fill_null(False).cast(pl.UInt8).alias(f"{f}_{i}")
            for f in FEATURES
            for i in range(n_bins)
        )
    distinct = frame.select(tags).unique().with_columns(srcp=pl.lit(""), url=pl.lit(""))
    keys = with_entity_keys(distinct.select(KEY_TAGS)).select(*tags, "key")
    frame = frame.join(keys, on=tags, how="left", maintain_order="left")
    columns = ["key", *tags, "start", "dt_s"]
    for f in FEATURES:
        columns += [f"{f}_log", f"{f}_bin"]
        columns += [f"{f}_{i}" for i in range(n_bins)] if one_hot else []
    return frame.select(columns)
