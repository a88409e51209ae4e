"""What every `netsentry` command shares: the settings, and the --db option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from netsentry.config import Settings


def settings_from(db: str | None) -> Settings:
    """The settings from the environment, with ``--db`` over ``NETSENTRY_DB``."""
    overrides: dict[str, Any] = {"db": Path(db)} if db else {}
    try:
        return Settings(**overrides)
    except Exception as err:  # pydantic explains what is wrong and where
        raise click.UsageError(f"invalid configuration: {err}") from err


db_option = click.option(
    "--db", envvar="NETSENTRY_DB", default=None, help="SQLite store (default var/netsentry.sqlite)."
)
