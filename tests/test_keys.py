"""Entity keys are pinned: any drift of the encoding breaks these tests."""

import hashlib

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsentry.keys import canonical_encoding, entity_key, format_key, parse_key, with_entity_keys
from netsentry.model import KEY_TAGS, Batch

RIOT_MUNIN = {
    "dst": "94.234.170.123",
    "dstp": "munin",
    "proto": "tcp",
    "service": "munin",
    "src": "demo.riotlocal",
    "srcp": "iotserver-exchange",
    "url": "http://demo.riotsecure.io:7888/metrics",
}


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({}, "fe9beef1dfb4bae1"),
        ({"src": "10.0.0.1", "dst": "10.0.0.2"}, "36d915e58b0ebca7"),
        (RIOT_MUNIN, "62795df3562a9429"),
        ({"src": "a_b", "dst": "c"}, "fc181644e2193092"),
        ({"src": "a", "dst": "b_c"}, "0d79561008297c25"),
        ({"url": "http://x/ü"}, "82b0e0bea56e6c95"),
    ],
)
def test_pinned_keys(tags, expected):
    assert format_key(entity_key(tags)) == expected


def test_encoding_is_netstrings_of_sorted_tags():
    encoded = canonical_encoding({"src": "a", "dst": "b"})
    assert encoded.startswith(b"5:dst=b,5:dstp=,")
    assert encoded.endswith(b"4:url=,")
    digest = hashlib.blake2b(encoded, digest_size=8).digest()
    assert entity_key({"src": "a", "dst": "b"}) == int.from_bytes(digest, "big")


def test_underscore_joins_do_not_collide():
    # The reference implementation's hash_table: both are "c_a_b" joined by "_".
    assert entity_key({"src": "a_b", "dst": "c"}) != entity_key({"src": "a", "dst": "b_c"})


def test_missing_tag_is_empty_and_other_tags_do_not_count():
    assert entity_key({"src": "a"}) == entity_key({"src": "a", "dst": ""})
    assert entity_key({"src": "a"}) == entity_key({"src": "a", "host": "telegraf-1"})


def test_key_text_round_trip_and_errors():
    key = entity_key(RIOT_MUNIN)
    assert parse_key(format_key(key)) == key
    for bad in ("", "123", "zzzzzzzzzzzzzzzz", "0" * 17):
        with pytest.raises(ValueError):
            parse_key(bad)


tag_values = st.text(max_size=12)


@given(st.lists(st.fixed_dictionaries({t: tag_values for t in KEY_TAGS}), min_size=1, max_size=30))
def test_vectorized_keys_match_scalar(rows):
    frame = pl.DataFrame({t: [r[t] for r in rows] for t in KEY_TAGS})
    keyed = with_entity_keys(frame)
    assert keyed["key"].to_list() == [entity_key(r) for r in rows]


@given(
    st.dictionaries(st.sampled_from(KEY_TAGS), tag_values),
    st.dictionaries(st.sampled_from(KEY_TAGS), tag_values),
)
def test_distinct_tag_sets_get_distinct_encodings(a, b):
    same = all(a.get(t, "") == b.get(t, "") for t in KEY_TAGS)
    assert (canonical_encoding(a) == canonical_encoding(b)) == same


def test_batch_computes_keys():
    batch = Batch.from_columns([1], ["m"], [1.0], {k: [v] for k, v in RIOT_MUNIN.items()})
    assert format_key(batch.frame["key"][0]) == "62795df3562a9429"
