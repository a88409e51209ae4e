"""The reference stream over real UDP: a device's sender and the transport's receiver.

:class:`VideoSender` plays a :class:`~netsentry.devices.video.VideoSource` in real
time: each RTP packet is sealed under the newest key of its
:class:`~netsentry.rotation.keyring.KeyRing` (:mod:`netsentry.devices.frames`) and sent
from a UDP socket on loopback when it is due. Installing a newer key in that ring
switches the sender at the next packet.

:class:`TransportReceiver` binds a UDP socket (127.0.0.1, a free port by default) and
runs one thread that opens every datagram with its own KeyRing, counts what it could
not accept, records the RTP packets it could (:class:`~netsentry.devices.packets.PacketLog`)
and hands them to a monitor (anything with ``observe(records)`` and ``flush(now_ns)``,
normally a :class:`~netsentry.devices.monitor.DeviceMonitor`). When no datagram comes
for ``idle_flush_s`` it calls ``flush`` so a silent device still closes windows. An
exception from the monitor is logged and counted, never allowed to stop the thread.

Counters (:class:`ReceiverStats`): ``received`` datagrams; ``opened`` frames accepted;
``undecryptable`` frames whose key id was never installed or whose tag does not
verify; ``stale`` frames under a retired key (refused); ``replayed``; ``malformed``
datagrams that are not frames of our version, or whose plaintext is not RTP.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, Self

from netsentry.devices.frames import (
    FrameError,
    FrameOpener,
    FrameSealer,
    NoKeyError,
    ReplayError,
    UndecryptableError,
)
from netsentry.devices.packets import PacketLog, PacketRecords
from netsentry.devices.rtp import RTPError, RTPHeader, parse
from netsentry.devices.video import VideoSource
from netsentry.rotation.keyring import KeyRing, StaleKeyError, UnknownKeyError

__all__ = ["Monitor", "ReceiverStats", "TransportReceiver", "VideoSender"]

log = logging.getLogger(__name__)
MAX_DATAGRAM = 65_535
SO_TIMESTAMPNS = 35  # Linux <asm-generic/socket.h>; also its control message type
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)
DRAIN = 256  # datagrams read without waiting before they are handed on together


def _kernel_time(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's receive time (ns since the epoch) from SO_TIMESTAMPNS, if any."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return int(seconds) * 1_000_000_000 + int(nanoseconds)
    return None


class Monitor(Protocol):
    def observe(self, records: PacketRecords) -> object: ...

    def flush(self, now_ns: int) -> object: ...


class VideoSender:
    """Sends a simulated video stream, sealed, to ``destination`` in real time.

    Parameters
    ----------
    keyring : the device's keys; the newest one seals each packet.
    destination : ``(host, port)`` of the receiver.
    source : the video source (its misbehaviour included).
    chunk_s : stream seconds scheduled at a time.
    sequence : first frame sequence number (default random, see frames).
    """

    def __init__(
        self,
        keyring: KeyRing,
        destination: tuple[str, int],
        source: VideoSource,
        *,
        chunk_s: float = 0.1,
        sequence: int | None = None,
    ) -> None:
        if chunk_s <= 0:
            raise ValueError(f"chunk_s must be positive, got {chunk_s}")
        self.destination, self.source, self.chunk_s = destination, source, chunk_s
        self.sealer = FrameSealer(keyring, sequence=sequence)
        self.sent = 0
        self.unsent = 0  # packets dropped because no key was installed yet
        self.started_at: float | None = None  # time.monotonic() of stream time 0
        #: time.monotonic() when the first packet a misbehaviour added or changed was sent
        #: (None before; :meth:`rearm` starts watching again)
        self.first_anomalous_at: float | None = None
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"VideoSender(destination={self.destination}, sent={self.sent})"

    def send(self, packet: bytes) -> None:
        """Seal one RTP packet under the current key and send it now."""
        try:
            frame = self.sealer.seal(packet)
        except NoKeyError:
            self.unsent += 1
            return
        self._sock.sendto(frame, self.destination)
        self.sent += 1

    def rearm(self) -> None:
        """Forget :attr:`first_anomalous_at` (before the next injected misbehaviour)."""
        self.first_anomalous_at = None

    def monotonic_at(self, stream_s: float) -> float:
        """The ``time.monotonic()`` at which stream time ``stream_s`` is (was) sent."""
        if self.started_at is None:
            raise RuntimeError("the sender has not started")
        return self.started_at + stream_s

    def run(self, duration_s: float) -> None:
        """Send the next ``duration_s`` seconds of stream, pacing each packet (blocking).

        Consecutive calls continue one stream. After a pause between calls (the next
        packet is more than ``chunk_s`` late), stream time is anchored to the clock again
        (:meth:`monotonic_at`): the pause is a pause in the stream, not a burst to catch up.
        """
        now = time.monotonic()
        if self.started_at is None or now > self.started_at + self.source.elapsed_s + self.chunk_s:
            self.started_at = now - self.source.elapsed_s
        end = self.source.elapsed_s + duration_s
        while self.source.elapsed_s < end - 1e-9 and not self._stop.is_set():
            step = min(self.chunk_s, end - self.source.elapsed_s)
            for packet in self.source.packets(step):
                delay = self.started_at + packet.send_s - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return
                self.send(packet.data)
                if packet.anomalous and self.first_anomalous_at is None:
                    self.first_anomalous_at = time.monotonic()

    def start(self, duration_s: float = float("inf")) -> None:
        """Run in a thread (until :meth:`stop`, or for ``duration_s``)."""
        if self._thread is not None:
            raise RuntimeError("the sender is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run, args=(duration_s,), name="video-sender", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ReceiverStats:
    received: int = 0
    opened: int = 0
    undecryptable: int = 0
    stale: int = 0
    replayed: int = 0
    malformed: int = 0
    monitor_errors: int = 0


class TransportReceiver:
    """Receives sealed frames on UDP, opens, counts, records and monitors them.

    Parameters
    ----------
    keyring : the transport's keys for this device's stream.
    host, port : where to bind (port 0: a free port; see :attr:`address`).
    monitor : gets ``observe(records)`` for what was opened and ``flush(now_ns)`` when idle.
    log_capacity : packet records kept (the most recent).
    idle_flush_s : silence after which the monitor is flushed.
    clock : time in ns since the epoch (default ``time.time_ns``): for flushes, and for
        arrivals where the kernel does not stamp them (on Linux it does: SO_TIMESTAMPNS).
    on_packet : called with each batch of records opened (e.g. by a test or a bench).
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        monitor: Monitor | None = None,
        log_capacity: int = 1_000_000,
        idle_flush_s: float = 0.1,
        clock: Callable[[], int] = time.time_ns,
        on_packet: Callable[[PacketRecords], None] | None = None,
    ) -> None:
        self.keyring, self.monitor, self.clock, self.on_packet = keyring, monitor, clock, on_packet
        self.opener = FrameOpener(keyring)
        self.log = PacketLog(log_capacity)
        self.idle_flush_s = idle_flush_s
        self._counts = {name: 0 for name in ReceiverStats.__dataclass_fields__}
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        if sys.platform == "linux":  # arrival stamped by the kernel, not when Python reads it
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._sock.bind((host, port))
        self._sock.setblocking(False)  # waits are select()s: a drain must never wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def __repr__(self) -> str:
        return f"TransportReceiver(address={self.address}, stats={self.stats()})"

    def stats(self) -> ReceiverStats:
        with self._lock:
            return ReceiverStats(**self._counts)

    def records(self) -> PacketRecords:
        return self.log.records()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the receiver is already running")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="transport-receiver", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self._sock.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for(self, opened: int, timeout: float = 10.0) -> bool:
        """Wait until at least ``opened`` frames were accepted (True) or ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.stats().opened >= opened:
                return True
            time.sleep(0.005)
        return self.stats().opened >= opened

    # -- the receiving thread ---------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _accept(self, frame: bytes) -> RTPHeader | None:
        """Open one datagram; count it; the RTP header of an accepted packet."""
        self._count("received")
        try:
            _, packet = self.opener.open(frame)
            header = parse(packet)
        except (UnknownKeyError, UndecryptableError):
            self._count("undecryptable")
        except StaleKeyError:
            self._count("stale")
        except ReplayError:
            self._count("replayed")
        except (FrameError, RTPError) as exc:
            self._count("malformed")
            log.debug("malformed datagram: %s", exc)
        else:
            self._count("opened")
            return header
        return None

    def _run(self) -> None:
        buffer = bytearray(MAX_DATAGRAM)
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], self.idle_flush_s)
            except (OSError, ValueError):  # closed under us
                return
            if not ready:
                self._hand_on(None)
                continue
            arrivals, headers = [], []
            for _ in range(DRAIN):  # what is queued now, without waiting
                try:
                    size, ancillary, _, _ = self._sock.recvmsg_into([buffer], _ANCILLARY)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    return
                arrival = _kernel_time(ancillary) or self.clock()
                header = self._accept(bytes(buffer[:size]))
                if header is not None:
                    arrivals.append(arrival)
                    headers.append(header)
            if headers:
                self._hand_on(PacketRecords.from_headers(arrivals, headers))

    def _hand_on(self, records: PacketRecords | None) -> None:
        try:
            if records is None:
                if self.monitor is not None:
                    self.monitor.flush(self.clock())
                return
            self.log.append(records)
            if self.on_packet is not None:
                self.on_packet(records)
            if self.monitor is not None:
                self.monitor.observe(records)
        except Exception:  # the receiver must outlive a faulty monitor
            self._count("monitor_errors")
            size = 0 if records is None else len(records)
            log.exception("device monitor failed on %d records", size)
