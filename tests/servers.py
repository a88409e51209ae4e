"""Real servers for the integration tests: started on free loopback ports, in temporary
directories, stopped (and restartable, for outage tests) by the fixtures.

Installed by ``scripts/ensure-test-servers.sh`` (``make test`` runs it).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """One server process with a fixed command line; ``stop`` and ``start`` keep its
    port and data, so a test can cut it off in the middle of a run."""

    def __init__(
        self,
        name: str,
        command: list[str],
        ready: Callable[[], bool],
        log: Path,
        timeout_s: float = 30.0,
    ) -> None:
        if shutil.which(command[0]) is None:
            raise RuntimeError(f"{command[0]} is not installed: run scripts/ensure-test-servers.sh")
        self.name, self.command, self.ready, self.log = name, command, ready, log
        self.timeout_s = timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):  # not listening yet
                if self.ready():
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready in {self.timeout_s}s: {self.log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def http_ok(url: str, *statuses: int) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=1.0).status_code in (statuses or (200, 204))

    return check
