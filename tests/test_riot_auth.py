"""The seed's authentication: header, nonces, authority, replay and staleness."""

from __future__ import annotations

import inspect
import random
import re
import time

import pytest
from pydantic import SecretStr, ValidationError

from netsentry.respond import riot_auth
from netsentry.respond.riot import (
    RiotClient,
    RiotSettings,
)
from netsentry.respond.riot_auth import (
    NonceGuard,
    authority,
    authorization_header,
    make_nonce,
    parse_authorization,
    verify,
)
from riot_standin import (
    FAKE_HA1,
    FIXED_NONCE,
    HA1,
    SEED_POOL,
    USER,
    VECTORS,
    WRONG_HA1,
    seed_authority,
    seed_check,
)

# -- the authorization ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "uri", "expected"), VECTORS)
def test_authority_matches_pinned_vectors_and_the_seed_formula(method, uri, expected):
    assert authority(FAKE_HA1, FIXED_NONCE, method, uri) == expected
    assert seed_authority(FAKE_HA1, FIXED_NONCE, method, uri) == expected
    assert authority(HA1, FIXED_NONCE, method, uri) == seed_authority(HA1, FIXED_NONCE, method, uri)


def test_header_has_the_seed_format():
    header = authorization_header(USER, HA1, "GET", "/global", now=0x65A1B2C3)
    match = re.fullmatch(
        r'oasis username="service", nonce="([0-9A-F]{8})([A-H0-9]{24})", '
        r'authority="([0-9A-F]{32})"',
        header,
    )
    assert match is not None and match.group(1) == "65A1B2C3"
    assert seed_check(header, "GET", "/global", {USER: HA1}) is None
    assert seed_check(header, "GET", "/global?expand", {USER: HA1}) == "authority"
    fields = parse_authorization(header)
    assert fields["username"] == USER
    assert fields["authority"] == seed_authority(HA1, fields["nonce"], "GET", "/global")


def test_nonces_are_time_then_pool_characters_and_distinct():
    now = 1_712_345_678.9
    nonces = [make_nonce(now) for _ in range(2000)]
    assert len(set(nonces)) == len(nonces)
    for nonce in nonces:
        assert len(nonce) == 32 and nonce[:8] == f"{int(now):08X}"
        assert set(nonce[8:]) <= set(SEED_POOL)
    assert set("".join(n[8:] for n in nonces)) == set(SEED_POOL)
    assert make_nonce(0xABCDEF)[:8] == "00ABCDEF"  # zero-padded, unlike the seed's '{:8X}'
    assert abs(int(make_nonce()[:8], 16) - time.time()) < 5
    for bad in (-1, 2**32):
        with pytest.raises(ValueError):
            make_nonce(bad)


def test_nonces_come_from_secrets_not_from_random():
    random.seed(1234)
    first = make_nonce(0)
    random.seed(1234)
    assert make_nonce(0) != first  # a seeded `random` does not reproduce them
    source = inspect.getsource(riot_auth)
    assert "secrets.choice(POOL)" in source and "import random" not in source


@pytest.mark.parametrize(
    "header",
    [
        'Oasis username="u", nonce="n", authority="' + "A" * 32 + '"',
        'Digest username="u", nonce="n", authority="' + "A" * 32 + '"',
        'oasis username="u", nonce="n"',
        'oasis nonce="n", username="u", authority="' + "A" * 32 + '"',
        'oasis username="u",nonce="n", authority="' + "A" * 32 + '"',
        "oasis username='u', nonce='n', authority='" + "A" * 32 + "'",
        'oasis username=u, nonce="n", authority="' + "A" * 32 + '"',
        'oasis username="u", nonce="n", authority="' + "a" * 32 + '"',
        'oasis username="u", nonce="n", authority="' + "A" * 31 + '"',
        'oasis username="u", nonce="n", authority="' + "A" * 32 + '" ',
        'oasis username="u", nonce="n", authority="' + "A" * 32 + '", realm="x"',
        'oasis username="u"x", nonce="n", authority="' + "A" * 32 + '"',
        'oasis username="", nonce="n", authority="' + "A" * 32 + '"',
        'oasis username="u\n", nonce="n", authority="' + "A" * 32 + '"',
    ],
)
def test_parse_is_strict(header):
    with pytest.raises(ValueError, match="malformed"):
        parse_authorization(header)


@pytest.mark.parametrize("username", ["", 'a"b', "a\\b", "a\r\nb"])
def test_header_refuses_unsafe_usernames(username):
    with pytest.raises(ValueError, match="username"):
        authorization_header(username, HA1, "GET", "/global")


def test_nonce_guard_freshness_replay_and_bounded_memory():
    now = [1_712_345_678.0]
    guard = NonceGuard(max_age_s=300, clock=lambda: now[0], max_entries=3)
    tail = "ABCDEFGH0123456789ABCDEF"
    at = lambda t, c="A": f"{int(t):08X}{c}{tail[1:]}"  # noqa: E731
    for bad in ("65a1b2c3" + tail, "65A1B2C3" + tail[:-1] + "Z", "65A1B2C3" + tail[:-1], ""):
        with pytest.raises(ValueError, match="malformed"):
            guard.check(bad)
    with pytest.raises(ValueError, match="stale"):
        guard.check(at(now[0] - 301))
    with pytest.raises(ValueError, match="future"):
        guard.check(at(now[0] + 31))
    guard.check(at(now[0] - 300))  # boundaries are accepted
    guard.check(at(now[0] + 30))
    with pytest.raises(ValueError, match="replayed"):
        guard.check(at(now[0] + 30))
    now[0] += 1  # the first one expires as stale and is forgotten
    guard.check(at(now[0], "B"))
    assert len(guard) == 2
    guard.check(at(now[0], "C"))
    guard.check(at(now[0], "D"))  # over max_entries: the oldest go, with their time
    assert len(guard) == 3
    with pytest.raises(ValueError, match="stale"):
        guard.check(at(now[0], "B"))  # forgotten, still refused: no replay window


def test_verify_reasons():
    guard = NonceGuard()
    users = {USER: HA1}
    header = authorization_header(USER, HA1, "PUT", "/events")
    for method, uri in (("GET", "/events"), ("PUT", "/global"), ("PUT", "/events?x")):
        with pytest.raises(ValueError, match="wrong authority"):
            verify(header, method, uri, users, guard)
    with pytest.raises(ValueError, match="unknown user"):
        verify(authorization_header("eve", HA1, "PUT", "/events"), "PUT", "/events", users, guard)
    with pytest.raises(ValueError, match="wrong authority"):
        verify(
            authorization_header(USER, WRONG_HA1, "PUT", "/events"), "PUT", "/events", users, guard
        )
    assert len(guard) == 0  # refused requests take no memory
    assert verify(header, "PUT", "/events", users, guard) == USER
    with pytest.raises(ValueError, match="replayed"):
        verify(header, "PUT", "/events", users, guard)


# -- settings ------------------------------------------------------------------------


def test_settings_from_environment_and_secrets_kept_secret(monkeypatch):
    monkeypatch.setenv("NETSENTRY_RIOT_BASE_URI", "https://demo.riotsecure.io:6443/")
    monkeypatch.setenv("NETSENTRY_RIOT_USERNAME", USER)
    monkeypatch.setenv("NETSENTRY_RIOT_HA1", HA1.lower())
    loaded = RiotSettings(_env_file=None)
    assert loaded.base_uri == "https://demo.riotsecure.io:6443" and loaded.enabled
    assert loaded.ha1 is not None and loaded.ha1.get_secret_value() == HA1
    assert HA1 not in repr(loaded) and HA1.lower() not in repr(loaded)
    assert (loaded.uri, loaded.events_uri, loaded.service) == ("/global", "/events", "netsentry")
    monkeypatch.delenv("NETSENTRY_RIOT_HA1")
    with pytest.raises(ValidationError, match="HA1 is required"):
        RiotSettings(_env_file=None)
    monkeypatch.delenv("NETSENTRY_RIOT_BASE_URI")
    assert not RiotSettings(_env_file=None).enabled
    with pytest.raises(ValueError, match="not configured"):
        RiotClient(RiotSettings(_env_file=None))


@pytest.mark.parametrize(
    "changes",
    [
        {"ha1": SecretStr("not-hex")},
        {"username": ""},
        {"username": 'a"b'},
        {"base_uri": "ftp://x"},
        {"base_uri": "https://x/?a=1"},
        {"uri": "global"},
        {"uri": "/global?expand"},
        {"events_uri": "/a b"},
        {"service": "net sentry"},
        {"timeout_s": 0},
    ],
)
def test_settings_refuse_bad_values(changes):
    values = {"base_uri": "https://x", "username": USER, "ha1": SecretStr(HA1), **changes}
    with pytest.raises(ValidationError):
        RiotSettings(_env_file=None, **values)
