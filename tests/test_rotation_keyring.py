"""The key ring: increasing key ids, grace period after the switch, thread safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netsentry.rotation.keyring import KeyRing, StaleKeyError, UnknownKeyError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def key(n: int) -> bytes:
    return bytes([n % 256]) * 32


def test_empty_ring():
    ring = KeyRing()
    assert ring.current is None
    with pytest.raises(UnknownKeyError, match="never installed"):
        ring.lookup(1)


def test_key_ids_only_increase():
    ring = KeyRing()
    ring.install(3, key(3))
    for stale in (3, 2, 0):
        with pytest.raises(StaleKeyError, match="not newer than the newest installed"):
            ring.install(stale, key(stale))
    ring.install(7, key(7))
    assert ring.current == (7, key(7))


@pytest.mark.parametrize(("key_id", "material"), [(-1, key(1)), (1, b"short"), (1, bytes(33))])
def test_bad_install_refused(key_id, material):
    with pytest.raises(ValueError, match="key"):
        KeyRing().install(key_id, material)


def test_old_key_lives_grace_after_first_use_of_new():
    clock = Clock()
    switched: list[int] = []
    ring = KeyRing(grace_s=2.0, clock=clock, on_switch=switched.append)
    ring.install(1, key(1))
    assert ring.lookup(1) == key(1)
    ring.install(2, key(2))
    clock.now += 60  # the sender has not switched yet: nothing retires
    assert ring.lookup(1) == key(1)
    assert ring.lookup(2) == key(2)  # first frame under key 2
    clock.now += 1.9
    assert ring.lookup(1) == key(1)  # in flight: still opens
    clock.now += 0.1
    with pytest.raises(StaleKeyError, match=r"key id 1 was retired \(superseded by key id 2\)"):
        ring.lookup(1)
    assert ring.lookup(2) == key(2)
    assert ring.key_ids == [2]
    assert switched == [1, 2]


def test_retire_pending_reports_ids():
    clock = Clock()
    ring = KeyRing(grace_s=1.0, clock=clock)
    for n in (1, 2, 3):
        ring.install(n, key(n))
    ring.lookup(3)
    assert ring.retire_pending() == []
    clock.now += 1.0
    assert ring.retire_pending() == [1, 2]
    with pytest.raises(UnknownKeyError):
        ring.lookup(5)


def test_overlapping_rotations_retire_in_order():
    clock = Clock()
    ring = KeyRing(grace_s=5.0, clock=clock)
    ring.install(1, key(1))
    ring.install(2, key(2))
    ring.lookup(2)  # key 1 retires at t+5
    clock.now += 1
    ring.install(3, key(3))
    ring.lookup(3)  # key 2 retires at t+6
    clock.now += 4
    with pytest.raises(StaleKeyError):
        ring.lookup(1)
    assert ring.lookup(2) == key(2)
    clock.now += 1
    with pytest.raises(StaleKeyError):
        ring.lookup(2)


def test_on_switch_called_once_per_newer_key_outside_the_lock():
    ring = KeyRing()
    seen: list[tuple[int, list[int]]] = []
    ring.on_switch = lambda key_id: seen.append((key_id, ring.key_ids))  # re-enters the lock
    ring.install(1, key(1))
    ring.install(2, key(2))
    for key_id in (1, 1, 2, 1, 2):
        ring.lookup(key_id)
    assert seen == [(1, [1, 2]), (2, [1, 2])]


def test_peek_gives_the_key_without_switching():
    clock = Clock()
    switched: list[int] = []
    ring = KeyRing(grace_s=1.0, clock=clock, on_switch=switched.append)
    ring.install(1, key(1))
    ring.lookup(1)
    ring.install(2, key(2))
    for _ in range(3):
        assert ring.peek(2) == key(2)
    clock.now += 60  # peeks started no grace period: key 1 is still held
    assert ring.key_ids == [1, 2]
    assert ring.retire_pending() == []
    assert ring.peek(1) == key(1)
    assert switched == [1]
    with pytest.raises(UnknownKeyError, match="never installed"):
        ring.peek(3)


def test_confirm_switches_once_and_starts_the_grace_period():
    clock = Clock()
    switched: list[int] = []
    ring = KeyRing(grace_s=1.0, clock=clock, on_switch=switched.append)
    ring.install(1, key(1))
    ring.install(2, key(2))
    ring.confirm(1)
    ring.confirm(2)
    ring.confirm(2)
    ring.confirm(1)  # an older key in flight: no switch back
    assert switched == [1, 2]
    clock.now += 1.0
    with pytest.raises(StaleKeyError, match="superseded by key id 2"):
        ring.peek(1)
    with pytest.raises(StaleKeyError):
        ring.confirm(1)
    with pytest.raises(UnknownKeyError):
        ring.confirm(3)
    assert switched == [1, 2]


def test_bounded_number_of_keys_keeps_the_one_in_use():
    ring = KeyRing(max_keys=3)
    ring.install(1, key(1))
    ring.lookup(1)
    for n in range(2, 7):
        ring.install(n, key(n))
    assert ring.key_ids == [1, 5, 6]
    with pytest.raises(StaleKeyError):
        ring.lookup(2)


def test_repr_hides_keys():
    ring = KeyRing()
    secret = bytes(range(32))
    ring.install(4, secret)
    text = repr(ring) + str(ring)
    assert secret.hex() not in text and repr(secret) not in text
    assert "4" in text


@given(st.lists(st.integers(0, 50), max_size=30))
def test_install_accepts_exactly_the_increasing_ids(ids):
    ring = KeyRing()
    newest = -1
    for key_id in ids:
        if key_id > newest:
            ring.install(key_id, key(key_id))
            newest = key_id
        else:
            with pytest.raises(StaleKeyError):
                ring.install(key_id, key(key_id))
    assert (ring.current or (-1, b""))[0] == newest


def test_concurrent_install_and_lookup():
    ring = KeyRing(grace_s=10.0, max_keys=10_000)  # nothing evicted: every lookup must open
    ring.install(0, key(0))
    errors: list[BaseException] = []
    done = threading.Event()

    def receive() -> None:
        while not done.is_set():
            current = ring.current
            assert current is not None
            try:
                assert ring.lookup(current[0]) == current[1]
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
                return

    threads = [threading.Thread(target=receive) for _ in range(3)]
    for thread in threads:
        thread.start()
    for n in range(1, 2000):
        ring.install(n, key(n))
    done.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ring.current == (1999, key(1999))
