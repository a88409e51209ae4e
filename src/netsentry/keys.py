"""Entity keys: a stable 64-bit hash of the tags that identify a traffic entity.

The encoding is canonical and unambiguous, so that two different tag sets can only
share a key by a hash collision (probability about n²/2⁶⁵ for n entities):

* tag names in sorted order (:data:`netsentry.model.KEY_TAGS`), every one of them,
  a missing tag being the empty string;
* each ``name=value`` pair written as a netstring, ``<len>:<bytes>,`` over UTF-8,
  so no value can imitate a separator (the reference implementation joined the
  values with ``_``, and ``a_b`` + ``c`` collided with ``a`` + ``b_c``);
* BLAKE2b with an 8-byte digest, read big-endian.

The key is shown as 16 lower-case hex digits. ``tests/test_keys.py`` pins known keys,
so the encoding can never drift silently between versions.

>>> format_key(entity_key({"src": "10.0.0.1", "dst": "10.0.0.2"}))
'36d915e58b0ebca7'
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import polars as pl

from netsentry.model import KEY_TAGS


def _netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def canonical_encoding(tags: Mapping[str, str]) -> bytes:
    """The bytes that are hashed for ``tags`` (only :data:`KEY_TAGS` count)."""
    return b"".join(_netstring(f"{name}={tags.get(name, '') or ''}".encode()) for name in KEY_TAGS)


def entity_key(tags: Mapping[str, str]) -> int:
    """The entity key of one tag set, as an unsigned 64-bit integer."""
    digest = hashlib.blake2b(canonical_encoding(tags), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def format_key(key: int) -> str:
    return f"{key:016x}"


def parse_key(text: str) -> int:
    """Inverse of :func:`format_key`; raises ``ValueError`` on anything else."""
    if len(text) != 16:
        raise ValueError(f"entity key must be 16 hex digits, got {text!r}")
    return int(text, 16)


def with_entity_keys(frame: pl.DataFrame) -> pl.DataFrame:
    """Add a ``key`` column to a frame holding the :data:`KEY_TAGS` columns.

    Hashes each distinct tag set once (entities are far fewer than rows), then joins.
    """
    distinct = frame.select(KEY_TAGS).unique()
    keys = [entity_key(dict(zip(KEY_TAGS, row, strict=True))) for row in distinct.iter_rows()]
    distinct = distinct.with_columns(pl.Series("key", keys, dtype=pl.UInt64))
    return frame.drop("key", strict=False).join(
        distinct, on=list(KEY_TAGS), how="left", nulls_equal=True
    )
