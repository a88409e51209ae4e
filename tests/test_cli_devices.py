"""`netsentry devices` as an operator runs it: keygen, register, rotate, rotations
(real subprocesses, a real Mosquitto, a real device agent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from netsentry.rotation.agent import DeviceAgent
from netsentry.rotation.handshake import StaticKey


def devices(*args: str, db, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NETSENTRY_")}
    return subprocess.run(
        [sys.executable, "-m", "netsentry.cli", "devices", "--db", str(db), *args],
        capture_output=True,
        env={**clean, **env},
        timeout=120,
        text=True,
    )


def test_an_operator_provisions_and_rotates_from_the_command_line(tmp_path, broker):
    db = tmp_path / "s.sqlite"
    keygen = devices("keygen", db=db, env={})
    assert keygen.returncode == 0, keygen.stderr
    lines = dict(line.split() for line in keygen.stdout.splitlines())
    issuer = StaticKey.from_text(lines["private"])
    assert issuer.public.hex() == lines["public"]
    env = {
        "NETSENTRY_VAULT_KEY": os.urandom(32).hex(),
        "NETSENTRY_ISSUER_KEY": lines["private"],
        "NETSENTRY_MQTT_HOST": "127.0.0.1",
        "NETSENTRY_MQTT_PORT": str(broker),
    }
    camera = StaticKey.generate()
    done = devices("register", "cam-7", "--public-key", camera.public.hex(), db=db, env=env)
    assert done.returncode == 0 and "registered device cam-7" in done.stdout, done.stderr
    again = devices("register", "cam-7", "--public-key", camera.public.hex(), db=db, env=env)
    assert again.returncode != 0 and "cam-7" in again.stderr
    bad = devices("register", "cam-8", "--public-key", "zz", db=db, env=env)
    assert bad.returncode == 2 and "Error" in bad.stderr

    with DeviceAgent("cam-7", camera, issuer.public, host="127.0.0.1", port=broker) as agent:
        rotated = devices("rotate", "cam-7", "--note", "maintenance", db=db, env=env)
        assert rotated.returncode == 0, rotated.stderr
        assert "cam-7: key 1 in use" in rotated.stdout
        assert agent.keyring.current is not None and agent.keyring.current[0] == 1
    listed = devices("list", db=db, env=env)
    assert "cam-7" in listed.stdout and "key 1" in listed.stdout
    history = [
        json.loads(line)
        for line in devices("rotations", "cam-7", db=db, env=env).stdout.splitlines()
    ]
    assert [(r["key_id"], r["reason"], r["detail"]) for r in history] == [
        (1, "operator", "maintenance")
    ]
    # no agent answers now: the rotation fails, says why, and is recorded
    failed = devices("rotate", "cam-7", db=db, env={**env, "NETSENTRY_ROTATION_TIMEOUT_S": "0.2"})
    assert failed.returncode == 1 and "failed" in failed.stderr
    unknown = devices("rotate", "cam-9", db=db, env=env)
    assert unknown.returncode == 1 and "cam-9" in unknown.stderr
    # keys never reach the terminal
    everything = keygen.stdout + rotated.stdout + failed.stderr + listed.stdout
    assert lines["private"] not in everything.replace(keygen.stdout, "")


def test_rotation_commands_say_which_secret_is_missing(tmp_path):
    result = devices("list", db=tmp_path / "s.sqlite", env={})
    assert result.returncode == 2 and "NETSENTRY_VAULT_KEY" in result.stderr
    result = devices("rotate", "cam-1", db=tmp_path / "s.sqlite", env={"NETSENTRY_MQTT_HOST": "x"})
    assert result.returncode == 2 and "NETSENTRY_ISSUER_KEY" in result.stderr


def test_watch_pcap_learns_from_the_start_of_a_capture_and_flags_the_change(tmp_path):
    import dpkt

    from netsentry.devices.video import SizeChange, VideoSource
    from test_devices_packets import CAMERA, SINK, T0, _frame, _stream

    camera = VideoSource(seed=4)
    camera.inject(SizeChange(start_s=70.0, duration_s=5.0, factor=0.3))
    path = tmp_path / "camera.pcap"
    with open(path, "wb") as out:
        writer = dpkt.pcap.Writer(out)
        for t, frame in _stream(camera, 80.0):
            writer.writepkt(_frame(CAMERA, SINK, 40000, 5004, frame), ts=T0 + t)
        writer.writepkt(_frame(CAMERA, SINK, 40000, 5004, b"\x40" + bytes(15)), ts=T0 + 80.0)
    result = devices(
        "watch-pcap", str(path), "--dst-port", "5004", db=tmp_path / "s.sqlite", env={}
    )
    assert result.returncode == 0, result.stderr
    flagged = [json.loads(line) for line in result.stdout.splitlines()]
    assert flagged, result.stderr
    assert all(70e9 <= f["time_ns"] - T0 * 1e9 <= 77e9 for f in flagged)
    assert any("size_mean" in f["above_threshold"] for f in flagged)
    assert "1 malformed" in result.stderr and "profile judging" in result.stderr
    assert "1 episode(s)" in result.stderr
