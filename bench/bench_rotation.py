"""Key rotation over Mosquitto on loopback: round-trip latency, with and without Nagle.

One device and one transport receiver, each with its own agent and MQTT connection,
one issuer; every rotation delivers the key to the receiver, waits for its proof of
possession, then to the device, waits again, and records the rotation in SQLite
(``synchronous = FULL``). Figures:

- ``rotate``: the whole :meth:`KeyIssuer.rotate` call (key drawn and sealed, two
  deliveries with their acks, two SQLite commits);
- ``switch``: from the call to the receiver looking up the new key for the first time,
  when the device agent "sends a frame" the instant it installs the key (no UDP: what
  the protocol adds to the time until the new key is in use at the receiver).

Run twice in the same process: TCP_NODELAY on broker and clients (what netsentry
does), and the baseline with Nagle's algorithm left on (paho's and Mosquitto's
default).

    .venv/bin/python bench/bench_rotation.py [--rotations 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mosquitto_server import mosquitto_server
from netsentry.rotation.keyring import KeyRing
from rotation_fixtures import World


def run(tmp: Path, nodelay: bool, rotations: int, warmup: int = 10) -> dict[str, np.ndarray]:
    server, port = mosquitto_server(tmp / "broker", nodelay=nodelay)
    server.start()
    world = World(port, tmp / "rotation.sqlite")
    try:
        world.register("cam-1", "device")
        world.register("rx-1", "receiver")
        switched: dict[int, float] = {}
        ring = KeyRing(grace_s=0.0, on_switch=lambda k: switched.setdefault(k, time.perf_counter()))
        world.receiver("rx-1", rings={"cam-1": ring}, nodelay=nodelay)
        world.device("cam-1", nodelay=nodelay, on_install=lambda d, k: ring.lookup(k))
        issuer = world.issuer(nodelay=nodelay, attempts=1, timeout_s=2.0)
        rotate, switch = [], []
        for n in range(warmup + rotations):
            started = time.perf_counter()
            result = issuer.rotate("cam-1", "schedule", "bench")
            ended = time.perf_counter()
            if not result.ok:
                raise RuntimeError(f"rotation {n} failed: {result.error}")
            if n >= warmup:
                rotate.append((ended - started) * 1000)
                switch.append((switched[result.key_id] - started) * 1000)
        return {"rotate": np.array(rotate), "switch": np.array(switch)}
    finally:
        world.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rotations", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.rotations} rotations (1 receiver + 1 device), Mosquitto on loopback")
    print(f"{'':24} {'median ms':>10} {'p90 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, nodelay in [("TCP_NODELAY", True), ("Nagle on (baseline)", False)]:
        with tempfile.TemporaryDirectory() as tmp:
            figures = run(Path(tmp), nodelay, args.rotations)
        for name, values in figures.items():
            print(
                f"{label + ' ' + name:24} {np.median(values):10.2f} "
                f"{np.percentile(values, 90):8.2f} {np.percentile(values, 99):8.2f} "
                f"{values.max():8.2f}"
            )


if __name__ == "__main__":
    main()
