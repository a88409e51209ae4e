"""Crypto-PAn against its reference vectors, its properties, and key rotation by epoch."""

import base64
import hashlib
import hmac
import ipaddress
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsentry.privacy import (
    PERIOD_NS,
    CryptoPAn,
    Pseudonymizer,
    WeakKeyError,
    WrongKeyError,
    canonical_address,
    derive_epoch_key,
    epoch_ids,
    epoch_of,
    key_fingerprint,
    load_master_secret,
    parse_master_secret,
)

VECTORS = Path(__file__).parent / "data" / "cryptopan_vectors.txt"
# sample.cpp of the Crypto-PAn 1.0 reference distribution (header of the vectors file).
REFERENCE_KEY = bytes(
    [
        *(21, 34, 23, 141, 51, 164, 207, 128, 19, 10, 91, 22, 73, 144, 125, 16),
        *(216, 152, 143, 131, 121, 121, 101, 39, 98, 87, 76, 45, 42, 132, 34, 2),
    ]
)
# Yawning/cryptopan cryptopan_test.go, TestCryptopanIPv6 (also in the vectors' header).
IPV6_VECTORS = [
    ("::1", "78ff:f001:9fc0:20df:8380:b1f1:704:ed"),
    ("::2", "78ff:f001:9fc0:20df:8380:b1f1:704:ef"),
    ("::ffff", "78ff:f001:9fc0:20df:8380:b1f1:704:f838"),
    ("2001:db8::1", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1e"),
    ("2001:db8::2", "4401:2bc:603f:d91d:27f:ff8e:e6f1:dc1c"),
]
# Random-looking test masters (never use these anywhere else).
MASTER = bytes.fromhex("8f3a1c5e7b9d2f4a6c8e0b1d3f5a7c9e2b4d6f8a0c1e3b5d7f9a2c4e6b8d0f1a")
OTHER_MASTER = hashlib.sha256(b"netsentry test: another master").digest()
PASSPHRASE = b"The quick brown fox jumps over the lazy dog"
HOUR = PERIOD_NS["hour"]

PAN = CryptoPAn(REFERENCE_KEY)


def ipv4_vectors() -> list[tuple[str, str]]:
    lines = VECTORS.read_text().splitlines()
    return [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#")]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def common_prefix(a: int, b: int, bits: int) -> int:
    return bits - (a ^ b).bit_length()


# -- reference vectors --------------------------------------------------------------------


def test_vectors_file_holds_the_70_reference_pairs():
    vectors = ipv4_vectors()
    assert len(vectors) == 70
    assert bytes.fromhex("1522178d33a4cf80130a5b1649907d10d8988f837979652762574c2d2a842202") == (
        REFERENCE_KEY
    )


def test_reproduces_ipv4_reference_vectors_exactly():
    originals, expected = zip(*ipv4_vectors(), strict=True)
    assert [str(a) for a in PAN.anonymize(originals)] == list(expected)
    assert [str(PAN.anonymize_address(a)) for a in originals] == list(expected)
    values = np.array([int(ip(a)) for a in originals], dtype=np.uint32)
    assert PAN.anonymize_ipv4(values).tolist() == [int(ip(a)) for a in expected]


def test_reproduces_ipv6_vectors_exactly():
    originals, expected = zip(*IPV6_VECTORS, strict=True)
    assert PAN.anonymize(originals) == [ip(a) for a in expected]
    assert [PAN.anonymize_address(a) for a in originals] == [ip(a) for a in expected]


def test_reproduces_yacryptopan_self_test():
    pan = CryptoPAn(bytes(range(32)))  # yacryptopan's __main__ example
    assert [str(a) for a in pan.anonymize(["192.0.2.1", "2001:db8::1"])] == [
        "2.90.93.17",
        "dd92:2c44:3fc0:ff1e:7ff9:c7f0:8180:7e00",
    ]


def test_reverses_reference_vectors():
    pairs = ipv4_vectors() + IPV6_VECTORS
    assert PAN.deanonymize([b for _, b in pairs]) == [ip(a) for a, _ in pairs]
    assert [PAN.deanonymize_address(b) for _, b in pairs] == [ip(a) for a, _ in pairs]


# -- properties ---------------------------------------------------------------------------

ipv4_ints = st.integers(0, 2**32 - 1)
ipv6_ints = st.integers(0, 2**128 - 1)


def near(base: int, bits: int) -> st.SearchStrategy[int]:
    """Addresses sharing a random-length prefix with ``base`` (so prefixes are exercised)."""
    return st.integers(0, bits).flatmap(
        lambda keep: st.integers(0, 2 ** (bits - keep) - 1).map(
            lambda low: (base >> (bits - keep) << (bits - keep) | low) if keep else low
        )
    )


@settings(max_examples=60, deadline=None)
@given(base=ipv4_ints, data=st.data())
def test_prefix_preserved_ipv4(base, data):
    others = data.draw(st.lists(near(base, 32), min_size=1, max_size=12))
    values = [base, *others]
    out = PAN.anonymize_ipv4(np.array(values, dtype=np.uint32)).tolist()
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            assert common_prefix(out[i], out[j], 32) == common_prefix(a, b, 32)


@settings(max_examples=40, deadline=None)
@given(base=ipv6_ints, data=st.data())
def test_prefix_preserved_ipv6(base, data):
    others = data.draw(st.lists(near(base, 128), min_size=1, max_size=8))
    values = [base, *others]
    words = np.array([divmod(v, 1 << 64) for v in values], dtype=np.uint64)
    out = [(int(h) << 64) | int(lo) for h, lo in PAN.anonymize_ipv6(words)]
    for i, a in enumerate(values):
        for j, b in enumerate(values):
            assert common_prefix(out[i], out[j], 128) == common_prefix(a, b, 128)


addresses = st.one_of(
    ipv4_ints.map(ipaddress.IPv4Address), ipv6_ints.map(ipaddress.IPv6Address)
).map(str)


@settings(max_examples=60, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), values=st.lists(addresses, max_size=20))
def test_round_trip_is_identity(key, values):
    pan = CryptoPAn(key)
    assert pan.deanonymize(pan.anonymize(values)) == [canonical_address(v) for v in values]


@settings(max_examples=30, deadline=None)
@given(key=st.binary(min_size=32, max_size=32), values=st.lists(addresses, max_size=12))
def test_vectorized_equals_scalar(key, values):
    pan = CryptoPAn(key)
    assert pan.anonymize(values) == [pan.anonymize_address(v) for v in values]
    assert pan.deanonymize(values) == [pan.deanonymize_address(v) for v in values]


def test_vectorized_equals_scalar_on_many_random_addresses():
    rng = np.random.default_rng(20240607)
    pan = CryptoPAn(rng.bytes(32))
    v4 = rng.integers(0, 2**32, 300, dtype=np.uint64)
    v4[:100] = (v4[:100] & np.uint64(0xFFFF0000)) | np.uint64(0x0A00)  # shared prefixes
    v4[100:110] = v4[0]  # duplicates
    out4 = pan.anonymize_ipv4(v4).tolist()
    assert out4 == [int(pan.anonymize_address(ipaddress.IPv4Address(int(v)))) for v in v4]
    words = rng.integers(0, 2**64, (40, 2), dtype=np.uint64)
    words[:20, 0] = words[0, 0]  # one shared /64
    out6 = pan.anonymize_ipv6(words)
    for (h, lo), (oh, olo) in zip(words.tolist(), out6.tolist(), strict=True):
        scalar = int(pan.anonymize_address(ipaddress.IPv6Address((h << 64) | lo)))
        assert scalar == (oh << 64) | olo
    assert (pan.deanonymize_ipv6(out6) == words).all()
    assert (pan.deanonymize_ipv4(out4) == v4).all()


def test_empty_inputs():
    assert PAN.anonymize([]) == []
    assert PAN.anonymize_ipv4(np.array([], dtype=np.uint32)).size == 0
    assert PAN.deanonymize_ipv6(np.zeros((0, 2), dtype=np.uint64)).shape == (0, 2)


def test_ipv4_mapped_ipv6_is_canonicalised_to_ipv4():
    mapped = "::ffff:192.0.2.1"
    assert canonical_address(mapped) == ip("192.0.2.1")
    expected = PAN.anonymize_address("192.0.2.1")
    assert PAN.anonymize([mapped]) == [expected]
    assert PAN.anonymize_address(ipaddress.IPv6Address(mapped)) == expected
    assert isinstance(expected, ipaddress.IPv4Address)


def test_zone_id_is_kept_and_bad_inputs_refused():
    (out,) = PAN.anonymize(["fe80::1%eth0"])
    assert out.scope_id == "eth0"
    assert PAN.deanonymize([out]) == [ip("fe80::1%eth0")]
    with pytest.raises(ValueError):
        PAN.anonymize(["demo.riotlocal"])
    with pytest.raises(TypeError):
        PAN.anonymize([3232235777])
    with pytest.raises(ValueError):
        CryptoPAn(b"short")
    assert "key" in repr(PAN) and REFERENCE_KEY.hex() not in repr(PAN)


# -- epochs and key derivation -----------------------------------------------------------


def rfc5869_sha256(ikm: bytes, info: bytes, length: int, salt: bytes = b"") -> bytes:
    """HKDF-SHA256 written from RFC 5869, independent of the implementation under test."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_reference_hkdf_matches_rfc5869_test_case_3():
    okm = rfc5869_sha256(bytes([0x0B] * 22), b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
    )


@pytest.mark.parametrize(
    ("period", "epoch", "expected"),
    [
        ("hour", 0, "18b9eaa4fb1a87c05bce24bd57f19fa4f4a8ed11950cf44b7cde2d696fd4976b"),
        ("day", 19876, "6dedd26b38a65aefc9529cae253eac2e7c784a5af9f6b09b72c49231ec87e3ff"),
    ],
)
def test_epoch_key_derivation_is_pinned(period, epoch, expected):
    info = f"netsentry/crypto-pan/v1 period={period} epoch={epoch}".encode()
    assert rfc5869_sha256(MASTER, info, 32).hex() == expected
    assert derive_epoch_key(MASTER, period, epoch).hex() == expected
    assert key_fingerprint(MASTER) == "43b33527155cd225"


def test_epoch_ids_by_period():
    t = int(datetime(2024, 6, 1, 13, 30, tzinfo=UTC).timestamp()) * 10**9
    times = pl.Series([0, HOUR - 1, HOUR, -1, t])
    assert epoch_ids(times, "hour").to_list() == [0, 0, 1, -1, t // HOUR]
    assert epoch_ids(times, "day").to_list() == [0, 0, 0, -1, 19875]
    assert epoch_of(t, "day") == 19875
    stamps = pl.Series([datetime(2024, 6, 1, 13, 30)]).dt.replace_time_zone("UTC")
    assert epoch_ids(stamps, "hour").to_list() == [t // HOUR]
    with pytest.raises(ValueError, match="nulls"):
        epoch_ids(pl.Series([1, None]), "hour")
    with pytest.raises(ValueError, match="period"):
        epoch_ids(times, "week")  # type: ignore[arg-type]


def test_rotation_changes_mapping_across_epochs_only():
    p = Pseudonymizer(MASTER, period="hour")
    addresses = pl.Series(["10.1.2.3", "10.1.2.3", "10.1.2.3", "2001:db8::7", "2001:db8::7"])
    times = pl.Series([5, HOUR - 1, HOUR, 5, 2 * HOUR])
    out = p.pseudonymize(addresses, times)
    a = out.addresses.to_list()
    assert out.epochs.to_list() == [0, 0, 1, 0, 2]
    assert a[0] == a[1] != a[2]  # same epoch same pseudonym; next epoch another one
    assert a[3] != a[4]
    epoch0 = CryptoPAn(derive_epoch_key(MASTER, "hour", 0))
    assert a[0] == str(epoch0.anonymize_address("10.1.2.3"))
    daily = Pseudonymizer(MASTER, period="day").pseudonymize(addresses, times).addresses
    assert daily.n_unique() == 2  # one day: one key


def test_reversal_with_the_right_master_and_not_with_a_wrong_one():
    rng = np.random.default_rng(7)
    values = [str(ipaddress.IPv4Address(int(v))) for v in rng.integers(0, 2**32, 200)]
    # ::/96 and ::ffff:0:0/96 print differently in inet_ntop and ipaddress: ipaddress wins
    values += ["::1", "::102:304", "2001:db8::1:0:0:1", "2001:db8::1", "fe80::1%eth0"]
    values += ["::ffff:10.0.0.1"]
    addresses = pl.Series("src", values)
    times = pl.Series(rng.integers(0, 3 * 86_400 * 10**9, len(values)))
    p = Pseudonymizer(MASTER, period="hour")
    out = p.pseudonymize(addresses, times)
    assert out.passed_through == 0 and out.addresses.name == "src"
    assert not set(out.addresses.to_list()) & set(values[:200])
    back = Pseudonymizer(MASTER, period="hour").depseudonymize(
        out.addresses, out.epochs, fingerprint=p.fingerprint
    )
    assert back.addresses.to_list() == [*values[:-1], "10.0.0.1"]  # mapped -> IPv4
    wrong = Pseudonymizer(OTHER_MASTER, period="hour")
    with pytest.raises(WrongKeyError):
        wrong.depseudonymize(out.addresses, out.epochs, fingerprint=p.fingerprint)
    guessed = wrong.depseudonymize(out.addresses, out.epochs).addresses.to_list()
    assert sum(g == v for g, v in zip(guessed, values, strict=True)) == 0
    other_period = Pseudonymizer(MASTER, period="day").depseudonymize(out.addresses, out.epochs)
    assert other_period.addresses.to_list()[:200] != values[:200]


def test_repeated_and_distinct_batches_agree():
    """A batch that repeats addresses is deduplicated and joined back; a distinct one not."""
    rng = np.random.default_rng(3)
    distinct = [str(ipaddress.IPv4Address(int(v))) for v in rng.integers(0, 2**32, 50)]
    distinct += [f"2001:db8::{i:x}" for i in range(1, 51)] + ["demo.riotlocal"]
    p = Pseudonymizer(MASTER, period="hour")
    times = [HOUR * (i % 3) for i in range(len(distinct))]
    one_each = p.pseudonymize(pl.Series(distinct), pl.Series(times))
    expected = dict(zip(zip(distinct, times, strict=True), one_each.addresses, strict=True))
    picks = rng.integers(0, len(distinct), 2000)
    repeated = [distinct[i] for i in picks]
    out = p.pseudonymize(pl.Series(repeated), pl.Series([times[i] for i in picks]))
    assert out.addresses.to_list() == [expected[(distinct[i], times[i])] for i in picks]
    assert out.passed_through == repeated.count("demo.riotlocal")
    back = p.depseudonymize(out.addresses, out.epochs).addresses.to_list()
    assert back == repeated


def test_non_addresses_pass_through_and_are_counted():
    values = ["demo.riotlocal", "", None, "01.2.3.4", "1.2.3.4 ", "256.0.0.1", "10.0.0.1"]
    p = Pseudonymizer(MASTER)
    out = p.pseudonymize(pl.Series(values), pl.Series([0] * len(values)))
    assert out.addresses.to_list()[:6] == values[:6]
    assert out.addresses[6] != "10.0.0.1"
    assert out.passed_through == 5  # null is missing, not passed through
    back = p.depseudonymize(out.addresses, out.epochs)
    assert back.addresses.to_list() == values and back.passed_through == 5


@settings(max_examples=25, deadline=None)
@given(
    values=st.lists(st.one_of(addresses, st.sampled_from(["", "host.example", "-"])), max_size=30),
    data=st.data(),
)
def test_pseudonymizer_round_trip(values, data):
    times = data.draw(
        st.lists(st.integers(0, 10 * HOUR), min_size=len(values), max_size=len(values))
    )
    p = Pseudonymizer(MASTER, period="hour")
    out = p.pseudonymize(pl.Series(values, dtype=pl.String), pl.Series(times, dtype=pl.Int64))
    expected = [
        str(canonical_address(v)) if v not in ("", "host.example", "-") else v for v in values
    ]
    assert p.depseudonymize(out.addresses, out.epochs).addresses.to_list() == expected


# -- the master secret --------------------------------------------------------------------


def test_master_secret_from_environment_hex_or_base64():
    hex_text = MASTER.hex()
    assert load_master_secret({"NETSENTRY_PSEUDONYM_KEY": hex_text}) == MASTER
    assert load_master_secret({"NETSENTRY_PSEUDONYM_KEY": base64.b64encode(MASTER).decode()}) == (
        MASTER
    )
    assert parse_master_secret(base64.urlsafe_b64encode(MASTER).decode()) == MASTER
    with pytest.raises(WeakKeyError, match="NETSENTRY_PSEUDONYM_KEY is not set"):
        load_master_secret({})


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (MASTER[:16].hex(), "at least 32 bytes"),
        (bytes(32).hex(), "not random"),
        (bytes(range(32)).hex(), "not random"),
        (
            base64.b64encode(b"The quick brown fox jumps over the lazy dog").decode(),
            "printable text",
        ),
        ("not a key at all!", "neither hex nor base64"),
    ],
)
def test_weak_master_secrets_are_refused_without_echoing_them(text, reason):
    with pytest.raises(WeakKeyError, match=reason) as caught:
        parse_master_secret(text)
    assert text not in str(caught.value)
    with pytest.raises(WeakKeyError):
        Pseudonymizer(bytes(range(32)))


def test_pseudonymizer_never_shows_its_secret():
    p = Pseudonymizer(MASTER, period="day")
    assert MASTER.hex() not in repr(p) and p.fingerprint in repr(p)
