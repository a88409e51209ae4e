"""A real Mosquitto broker (Debian's ``/usr/sbin/mosquitto``) on a free loopback port,
with its own configuration file in a temporary directory and no persistence."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from servers import ServerProcess, free_port

MOSQUITTO = "/usr/sbin/mosquitto"


def mosquitto_server(tmp: Path, nodelay: bool = True) -> tuple[ServerProcess, int]:
    """A broker configured in ``tmp`` (not started), and its port.

    ``nodelay=False`` leaves Nagle's algorithm on in the broker, for baselines.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = tmp / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"set_tcp_nodelay {'true' if nodelay else 'false'}\n"
        "persistence false\n"
        "log_dest stdout\n"
        "log_type error\nlog_type warning\nlog_type notice\n"
    )
    command = [MOSQUITTO, "-c", str(config)]
    return ServerProcess("mosquitto", command, _accepts(port), tmp / "mosquitto.log"), port


def _accepts(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    return ready
