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
