"""Typed settings, read once from the environment (``NETSENTRY_*``) or a ``.env`` file.

The two run-time knobs of the seed, ``tolerance`` and ``frequency``, have their
ranges declared here once and are enforced at every entry point: these settings, the
``/config`` API, the CLI and (later) the RIoT control plane. Values set at run time
are kept in the store and take effect at the next check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TOLERANCE_RANGE: tuple[float, float] = (2.0, 6.0)
FREQUENCY_RANGE: tuple[int, int] = (1, 168)  # hours

Alternative = Literal["two-sided", "greater", "less"]


class DetectionSettings(BaseSettings):
    """What a check does; every field can be overridden per run."""

    model_config = SettingsConfigDict(env_prefix="NETSENTRY_", extra="ignore")

    tolerance: float = Field(3.0, ge=TOLERANCE_RANGE[0], le=TOLERANCE_RANGE[1])
    frequency: int = Field(24, ge=FREQUENCY_RANGE[0], le=FREQUENCY_RANGE[1])
    alternative: Alternative = "two-sided"
    min_count: int = Field(8, ge=2, le=100_000)
    adapt_after: int = Field(3, ge=1, le=10_000)
    counter_interval_s: float = Field(3600.0, gt=0)
    inbox_retention_s: float = Field(7 * 86400.0, gt=0)


class Settings(DetectionSettings):
    """Service settings. Secrets come from the environment, never from code."""

    model_config = SettingsConfigDict(env_prefix="NETSENTRY_", env_file=".env", extra="ignore")

    db: Path = Path("var/netsentry.sqlite")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(64 * 1024 * 1024, gt=0)

    # Pull sources (none by default: points arrive through /write and `ingest`).
    influx_url: str | None = None
    influx_db: str = "telegraf"
    influx_username: str | None = None
    influx_password: SecretStr | None = None
    influx_measurements: Annotated[list[str], NoDecode] = []
    prometheus_url: str | None = None
    prometheus_selectors: Annotated[list[str], NoDecode] = []
    prometheus_step_s: float = Field(60.0, gt=0)
    source_lateness_s: float = Field(60.0, ge=0)
    initial_lookback_h: float = Field(24.0, gt=0)

    # Flows: pseudonymized at ingest when a key is set (hex or base64, >= 32 bytes).
    pseudonym_key: SecretStr | None = None
    pseudonym_period: Literal["hour", "day"] = "day"
    flow_interval_s: float = Field(3600.0, gt=0)
    redis_url: str | None = None  # recent flows per conversation in Redis Streams
    parquet_dir: Path | None = None  # all flows as Parquet, partitioned by day

    @field_validator("influx_measurements", "prometheus_selectors", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        """``a,b`` in the environment, or a list in code."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_token")
    @classmethod
    def _token_strength(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("NETSENTRY_API_TOKEN must be at least 16 characters")
        return value
