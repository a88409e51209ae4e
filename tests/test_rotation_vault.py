"""The vault: sealing binds purpose and context, MACs verify in constant time."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsentry.rotation.vault import IntegrityError, Vault

MASTER = bytes(range(32))


def test_short_master_refused():
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Vault(b"x" * 31)


@given(plaintext=st.binary(max_size=256), aad=st.binary(max_size=64))
def test_seal_open_round_trip(plaintext, aad):
    vault = Vault(MASTER)
    sealed = vault.seal("device-key", plaintext, aad)
    assert vault.open("device-key", sealed, aad) == plaintext
    if len(plaintext) >= 8:
        assert plaintext not in sealed


def test_every_seal_uses_a_fresh_nonce():
    vault = Vault(MASTER)
    assert vault.seal("p", b"same", b"a") != vault.seal("p", b"same", b"a")


@pytest.mark.parametrize(
    ("purpose", "aad", "master"),
    [
        ("other", b"dev-1/1", MASTER),
        ("device-key", b"dev-1/2", MASTER),
        ("device-key", b"dev-1/1", bytes(range(1, 33))),
    ],
    ids=["purpose", "context", "master"],
)
def test_open_refuses_other_purpose_context_or_master(purpose, aad, master):
    sealed = Vault(MASTER).seal("device-key", b"k" * 32, b"dev-1/1")
    with pytest.raises(IntegrityError, match="does not open"):
        Vault(master).open(purpose, sealed, aad)


@given(position=st.integers(0, 12 + 32 + 16 - 1), bit=st.integers(0, 7))
def test_any_flipped_bit_is_refused(position, bit):
    vault = Vault(MASTER)
    sealed = bytearray(vault.seal("p", b"k" * 32, b"ctx"))
    sealed[position] ^= 1 << bit
    with pytest.raises(IntegrityError):
        vault.open("p", bytes(sealed), b"ctx")


@given(sealed=st.binary(max_size=40))
def test_garbage_is_a_clear_integrity_error(sealed):
    with pytest.raises(IntegrityError, match="'p'"):
        Vault(MASTER).open("p", sealed, b"")


def test_mac_verifies_and_refuses_changes():
    vault = Vault(MASTER)
    mac = vault.mac("profile", b"data")
    assert len(mac) == 32
    vault.verify("profile", b"data", mac)
    for data, purpose, tag in [
        (b"datA", "profile", mac),
        (b"data", "other", mac),
        (b"data", "profile", mac[:-1] + bytes([mac[-1] ^ 1])),
        (b"data", "profile", b""),
    ]:
        with pytest.raises(IntegrityError, match="MAC does not match"):
            vault.verify(purpose, data, tag)


def test_seal_and_mac_keys_are_separate():
    vault = Vault(MASTER)
    assert vault.mac("p", b"") != Vault(MASTER).mac("q", b"")
    assert vault.mac("p", b"") == Vault(MASTER).mac("p", b"")


def test_repr_hides_the_master():
    master = secrets.token_bytes(32)
    vault = Vault(master)
    text = repr(vault) + str(vault)
    assert master.hex() not in text and repr(master) not in text
    assert vault.fingerprint in text
    assert Vault(master).fingerprint == vault.fingerprint != Vault(MASTER).fingerprint
