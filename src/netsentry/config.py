"""Typed settings, read once from the environment (``NETSENTRY_*``) or a ``.env`` file.

The two run-time knobs of the seed, ``tolerance`` and ``frequency``, have their
ranges declared here once and are enforced at every entry point: these settings, the
``/config`` API, the CLI and (later) the RIoT control plane. Values set at run time
are kept in the store and take effect at the next check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TOLERANCE_RANGE: tuple[float, float] = (2.0, 6.0)
FREQUENCY_RANGE: tuple[int, int] = (1, 168)  # hours

Alternative = Literal["two-sided", "greater", "less"]
Bound = Literal["vp", "chebyshev", "normal"]

#: What a check can run: the z-score always, the others beside it (``detectors``).
DETECTORS = ("zscore", "changepoint", "hst", "ocsvm_online", "iforest", "lof", "ocsvm")


def _comma_separated(value: Any) -> Any:
    """``a,b`` in the environment, or a list in code."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


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

    # The detectors a check runs (``zscore`` always): NETSENTRY_DETECTORS=zscore,changepoint
    detectors: Annotated[list[str], NoDecode] = ["zscore", "changepoint"]
    # Machine-learned scores are flagged above this quantile of the scores of normal data.
    ml_quantile: float = Field(0.999, gt=0.5, lt=1.0)
    # The change-point detector (docs/changepoint.md): stage-1 alpha per window test,
    # delta placing the change moment, window points, quantile cells of the distribution
    # test (0 = mean only), the stage-2 bound and its alpha; on a confirmed change the
    # z-score baseline restarts from the new regime when ``changepoint_rebaseline``.
    changepoint_alpha: float = Field(0.001, gt=0.0, le=0.2)
    changepoint_delta: float = Field(0.5, ge=0.0, le=1.0)
    changepoint_window: int = Field(168, ge=4, le=100_000)
    changepoint_cells: int = Field(3, ge=0, le=8)
    changepoint_bound: Bound = "vp"
    changepoint_stage2_alpha: float = Field(0.05, gt=0.0, lt=1.0)
    changepoint_rebaseline: bool = True

    @field_validator("detectors", mode="before")
    @classmethod
    def _detector_list(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("detectors")
    @classmethod
    def _known_detectors(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detectors {unknown}; known: {', '.join(DETECTORS)}")
        if "zscore" not in value:
            raise ValueError("detectors must include zscore (the core detector)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _changepoint_consistent(self) -> DetectionSettings:
        """Refuse combinations the change-point detector would refuse, at start-up."""
        if "changepoint" in self.detectors:
            # imported here: the detector imports this module (Alternative)
            from netsentry.detect.changepoint import ChangePoint

            ChangePoint(**self.changepoint_params())
        return self

    def changepoint_params(self) -> dict[str, Any]:
        """The change-point detector's parameters from these settings."""
        return {
            "alpha": self.changepoint_alpha,
            "delta": self.changepoint_delta,
            "window": self.changepoint_window,
            "min_count": self.min_count,
            "cells": self.changepoint_cells,
            "alternative": self.alternative,
            "bound": self.changepoint_bound,
            "stage2_alpha": self.changepoint_stage2_alpha,
        }


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

    # Device key rotation over MQTT (docs/rotation.md); off without mqtt_host.
    mqtt_host: str | None = None
    mqtt_port: int = Field(1883, ge=1, le=65535)
    issuer_key: SecretStr | None = None  # netsentry's X25519 private key, hex or base64
    vault_key: SecretStr | None = None  # master secret for keys at rest (hex/base64, >= 32 B)
    rotation_attempts: int = Field(3, ge=1, le=20)
    rotation_timeout_s: float = Field(1.0, gt=0.0, le=60.0)
    rotation_interval_h: float | None = Field(None, gt=0.0)  # scheduled rotation; None: off
    rotation_cooldown_s: float = Field(30.0, ge=0.0)  # anomaly rotations per device at most

    @model_validator(mode="after")
    def _rotation_secrets(self) -> Settings:
        if self.mqtt_host is not None and (self.issuer_key is None or self.vault_key is None):
            raise ValueError(
                "NETSENTRY_MQTT_HOST turns key rotation on: set NETSENTRY_ISSUER_KEY "
                "(`netsentry devices keygen`) and NETSENTRY_VAULT_KEY (>= 32 random bytes)"
            )
        return self

    @field_validator("influx_measurements", "prometheus_selectors", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _comma_separated(value)

    @field_validator("api_token")
    @classmethod
    def _token_strength(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("NETSENTRY_API_TOKEN must be at least 16 characters")
        return value
