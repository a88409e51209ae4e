"""The whole loop on loopback: first anomalous packet -> new key in use at the receiver.

A simulated camera streams over UDP to a transport receiver whose monitor learned the
camera's profile; netsentry rotates the key over Mosquitto (TCP_NODELAY) when the
monitor flags an episode. After the learning phase the camera alternates normal
streaming with short misbehaviour (a new payload type, then a burst, in turn), with
the cooldown at 0, so every episode is one rotation. Per rotation:

- ``detect``: first anomalous packet sent -> the monitor's ``on_anomaly``;
- ``device``: first anomalous packet sent -> the device's agent installed the new key
  (its next packet is sealed under it);
- ``total``: first anomalous packet sent -> the receiver opens its first frame under
  the new key: ``device`` plus the wait for the camera's next packet and its trip.

Everything runs in one Python process here (camera, receiver and its monitor, issuer,
both agents), so they share one interpreter lock; deployed, they are separate
processes on separate machines.

The same run measures the baseline, a rotation with nothing to detect: an operator's
``KeyIssuer.rotate`` call -> the receiver's first frame under the new key. Then the
camera streams normally for ``--normal-min`` minutes: every rotation there is a false
one.

    .venv/bin/python bench/bench_device_rotation.py [--rotations 40] [--normal-min 2]
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
from netsentry.devices.loopback import Loopback
from netsentry.devices.video import Burst, NewPayloadType, VideoSource

LEARN_WINDOWS = 60
LEARN_S = LEARN_WINDOWS * 0.5 + 1.5
CYCLE_S = 3.0  # 0.3 s of misbehaviour, then normal until the episode has ended


def summary(name: str, ms: np.ndarray) -> str:
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return f"{name:42} n={len(ms):3}  median {p50:6.1f} ms  p90 {p90:6.1f}  p99 {p99:6.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rotations", type=int, default=40)
    parser.add_argument("--normal-min", type=float, default=2.0)
    args = parser.parse_args()
    source = VideoSource(seed=5)
    starts = [LEARN_S + 2.0 + i * CYCLE_S for i in range(args.rotations)]
    for i, start in enumerate(starts):
        kind = NewPayloadType(start, 0.3) if i % 2 == 0 else Burst(start, 0.3, rate_pps=1000.0)
        source.inject(kind)
    with tempfile.TemporaryDirectory() as tmp:
        server, port = mosquitto_server(Path(tmp) / "broker")
        server.start()
        try:
            loop = Loopback(Path(tmp) / "s.sqlite", port, source, learn_windows=LEARN_WINDOWS)
            with loop:
                assert loop.trigger is not None
                loop.trigger.cooldown_s = 0.0
                detected: list[float] = []
                forward = loop.monitor.on_anomaly

                def timed(device: str, detection: object) -> None:
                    detected.append(time.monotonic())
                    if forward is not None:
                        forward(device, detection)

                loop.monitor.on_anomaly = timed
                loop.sender.run(starts[0] - 0.5)
                learned_ok = loop.trigger.stats.requested == 0
                detect, device, total = [], [], []
                for i in range(args.rotations):
                    loop.sender.rearm()
                    before = len(loop.switches)
                    detected.clear()
                    loop.sender.run(CYCLE_S)
                    switch = loop.wait_for_switch(loop.switches[before - 1].key_id + 1, 5.0)
                    sent = loop.sender.first_anomalous_at
                    if switch is None or sent is None or not detected:
                        print(f"  cycle {i}: no rotation", file=sys.stderr)
                        continue
                    installed = [s.at for s in loop.installs if s.key_id == switch.key_id]
                    detect.append((detected[0] - sent) * 1e3)
                    device.append((installed[0] - sent) * 1e3)
                    total.append((switch.at - sent) * 1e3)
                # baseline: rotate with nothing to detect, streaming on
                loop.sender.start()
                baseline = []
                for _ in range(args.rotations):
                    last = loop.switches[-1].key_id
                    called = time.monotonic()
                    loop.issuer.rotate(loop.device_id, "operator", "bench baseline")
                    switch = loop.wait_for_switch(last + 1, 5.0)
                    if switch is not None:
                        baseline.append((switch.at - called) * 1e3)
                    time.sleep(0.05)
                loop.sender.stop()
                # false rotations in normal streaming (the source injects nothing after the cycles)
                loop.trigger.cooldown_s = 30.0
                requested = loop.trigger.stats.requested
                loop.sender.run(args.normal_min * 60.0)
                false = loop.trigger.stats.requested - requested
                stats = loop.receiver.stats()
        finally:
            server.stop()
    print(f"learning phase {LEARN_S:.0f} s, no alarm while learning: {learned_ok}")
    print(summary("first anomalous packet -> on_anomaly", np.array(detect)))
    print(summary("first anomalous packet -> device switched", np.array(device)))
    print(summary("first anomalous packet -> receiver opens new key", np.array(total)))
    print(summary("baseline: rotate() call -> new key in use", np.array(baseline)))
    hours = args.normal_min / 60.0
    rate = false / hours
    print(f"false rotations: {false} in {args.normal_min:g} min of normal streaming ({rate:.1f}/h)")
    print(
        f"frames: sent {loop.sender.sent}, opened {stats.opened}, undecryptable "
        f"{stats.undecryptable}, stale {stats.stale}"
    )


if __name__ == "__main__":
    main()
