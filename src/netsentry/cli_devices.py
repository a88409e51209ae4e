"""`netsentry devices`: key pairs, registrations, rotations (docs/rotation.md)."""

from __future__ import annotations

import json
import os

import click

from netsentry.cli_common import db_option, settings_from
from netsentry.config import Settings
from netsentry.privacy.epochs import parse_master_secret
from netsentry.rotation.handshake import StaticKey
from netsentry.rotation.registry import Registry, UnknownDeviceError
from netsentry.rotation.vault import Vault
from netsentry.service.rotation import RotationService
from netsentry.store.sqlite import Store


def _registry(settings: Settings) -> Registry:
    if settings.vault_key is None:
        raise click.UsageError("set NETSENTRY_VAULT_KEY (>= 32 random bytes, hex or base64)")
    vault = Vault(parse_master_secret(settings.vault_key.get_secret_value()))
    return Registry(Store(settings.db), vault)


@click.group()
@db_option
@click.pass_context
def devices(ctx: click.Context, db: str | None) -> None:
    """Devices whose keys netsentry rotates over MQTT."""
    ctx.obj = settings_from(db)


@devices.command()
def keygen() -> None:
    """Print a new X25519 key pair (private key first: keep it secret)."""
    key = StaticKey.generate()
    click.echo(f"private {key.private_bytes().hex()}")
    click.echo(f"public  {key.public.hex()}")


@devices.command()
@click.argument("device_id")
@click.option("--role", type=click.Choice(["device", "receiver"]), default="device")
@click.option("--public-key", required=True, help="Its X25519 public key (64 hex digits).")
@click.option("--replace", is_flag=True, help="Replace an existing registration.")
@click.pass_obj
def register(settings: Settings, device_id: str, role: str, public_key: str, replace: bool) -> None:
    """Register a device or transport receiver and its public key."""
    try:
        raw = bytes.fromhex(public_key)
        _registry(settings).register(device_id, role, raw, replace=replace)  # type: ignore[arg-type]
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    click.echo(f"registered {role} {device_id}")


@devices.command(name="list")
@click.pass_obj
def list_devices(settings: Settings) -> None:
    """Registered devices and receivers with their current key id."""
    registry = _registry(settings)
    for entry in registry.all():
        current = registry.current_key(entry.id) if entry.role == "device" else None
        key_id = "-" if current is None else current[0]
        click.echo(f"{entry.role:8} {entry.id:24} public {entry.public_key.hex()}  key {key_id}")


@devices.command()
@click.argument("device_id")
@click.option("--note", default="", help="Why (kept with the rotation).")
@click.pass_obj
def rotate(settings: Settings, device_id: str, note: str) -> None:
    """Rotate a device's key now (needs NETSENTRY_MQTT_HOST and the secrets)."""
    try:
        service = RotationService(settings, Store(settings.db), issuer_id=f"cli-{os.getpid()}")
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    service.start()
    try:
        rotation = service.rotate(device_id, "operator", note)
    except UnknownDeviceError as err:
        raise click.ClickException(str(err)) from err
    finally:
        service.stop()
    if not rotation.ok:
        raise click.ClickException(f"rotation of {device_id} failed: {rotation.error}")
    click.echo(
        f"{device_id}: key {rotation.key_id} in use, {rotation.latency_ms:.1f} ms, "
        f"{rotation.attempts} attempt(s)"
    )


@devices.command()
@click.argument("device_id")
@click.option("--limit", default=20, show_default=True)
@click.pass_obj
def rotations(settings: Settings, device_id: str, limit: int) -> None:
    """A device's rotations, newest first, as JSON lines."""
    for record in _registry(settings).rotations(device_id, limit):
        click.echo(json.dumps(record.__dict__, default=str))


@devices.command(name="watch-pcap")
@click.argument("capture", type=click.Path(exists=True, dir_okay=False))
@click.option("--device", "device_id", default="capture", show_default=True)
@click.option("--dst-port", type=int, default=None, help="Only UDP packets to this port.")
@click.option("--src", default=None, help="Only packets from this address.")
@click.option("--learn-windows", default=120, show_default=True, help="Windows to learn from.")
def watch_pcap(
    capture: str, device_id: str, dst_port: int | None, src: str | None, learn_windows: int
) -> None:
    """Learn a device's profile from the start of a capture and judge the rest.

    Prints each flagged window as a JSON line, then a summary. Nothing is stored.
    """
    from netsentry.devices.monitor import DeviceMonitor
    from netsentry.devices.packets import read_pcap

    found = read_pcap(capture, dst_port=dst_port, src=src)
    for problem in found.errors[:20]:
        click.echo(f"skipped: {problem}", err=True)
    monitor = DeviceMonitor(device_id, learn_windows=learn_windows, record="none")
    detections = monitor.observe(found.records)
    if len(found.records):
        detections += monitor.flush(int(found.records.arrival_ns[-1]))  # the capture ends here
    flagged = [d for d in detections if d.flagged]
    for d in flagged:
        scores = {k: round(v, 2) for k, v in d.scores.items() if v > d.thresholds.get(k, 1e300)}
        line = {"time_ns": d.time_ns, "feature": d.feature, "detector": d.detector}
        click.echo(json.dumps({**line, "early": d.early, "above_threshold": scores}))
    click.echo(
        f"{found.matched} RTP packets of {found.packets} ({found.error_count} malformed, "
        f"{found.not_matching} not matching); profile {monitor.state}; "
        f"{monitor.windows_judged} windows judged, {len(flagged)} flagged, "
        f"{monitor.episodes} episode(s)",
        err=True,
    )
