"""The sources that the settings ask for (InfluxDB 1.x, Prometheus)."""

from __future__ import annotations

from netsentry.config import Settings
from netsentry.sources.base import Source


def configured_sources(settings: Settings) -> list[Source]:
    sources: list[Source] = []
    lateness_ns = int(settings.source_lateness_s * 1e9)
    if settings.influx_url:
        from netsentry.sources.influxdb import InfluxQLSource

        password = settings.influx_password.get_secret_value() if settings.influx_password else None
        sources.append(
            InfluxQLSource(
                settings.influx_url,
                settings.influx_db,
                settings.influx_measurements or None,
                username=settings.influx_username,
                password=password,
                lateness_ns=lateness_ns,
            )
        )
    if settings.prometheus_url:
        from netsentry.sources.prometheus import PrometheusSource

        if not settings.prometheus_selectors:
            raise ValueError(
                "NETSENTRY_PROMETHEUS_URL is set but NETSENTRY_PROMETHEUS_SELECTORS "
                "is empty: name the series to read, e.g. tdmp_bytes_total"
            )
        sources.append(
            PrometheusSource(
                settings.prometheus_url,
                settings.prometheus_selectors,
                step_s=settings.prometheus_step_s,
                lateness_ns=lateness_ns,
            )
        )
    return sources
