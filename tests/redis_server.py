"""A real redis-server (Debian's) on a free loopback port, without persistence, in a
temporary directory (never the machine's own Redis on 6379)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from servers import ServerProcess, free_port


def redis_server(tmp: Path) -> tuple[ServerProcess, int]:
    """A redis-server with its directory in ``tmp`` (not started), and its port.

    ``--save ""`` and ``--appendonly no``: nothing is written unless a test asks for
    it (``SHUTDOWN SAVE`` writes ``tmp/dump.rdb``, which a restart loads).
    """
    port = free_port()
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp), "--daemonize", "no"]
    return ServerProcess("redis-server", command, _pings(port), tmp / "redis.log"), port


def client(port: int) -> redis.Redis:
    """A client that fails at once when the server is down (no retries)."""
    return redis.Redis(
        host="127.0.0.1",
        port=port,
        socket_timeout=2.0,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
    )


def _pings(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            return bool(client(port).ping())
        except redis.ConnectionError:
            return False

    return ready
