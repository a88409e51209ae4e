"""The deployment files cannot run here (no Docker engine): keep them consistent with the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from netsentry.cli import main as cli
from netsentry.config import Settings
from netsentry.respond.riot import RiotSettings

ROOT = Path(__file__).parent.parent


def settings_env_names() -> set[str]:
    names = {f"NETSENTRY_{name.upper()}" for name in Settings.model_fields}
    return names | {f"NETSENTRY_RIOT_{name.upper()}" for name in RiotSettings.model_fields}


def test_compose_sets_only_settings_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["services"]["netsentry"]["environment"]
    unknown = {name for name in env if name.startswith("NETSENTRY_")} - settings_env_names()
    assert not unknown, f"compose sets settings netsentry does not have: {unknown}"
    assert compose["services"]["netsentry"]["ports"] == [f"{Settings(_env_file=None).port}:8000"]


def test_every_compose_variable_is_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", (ROOT / "docker-compose.yml").read_text()))
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert used <= example, used - example
    assert all(
        not line.split("=", 1)[1]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line.startswith(("NETSENTRY_API_TOKEN", "RIOT_HA1"))
    )


def test_dockerfile_runs_the_service_as_configured():
    text = (ROOT / "Dockerfile").read_text()
    env = dict(re.findall(r"(NETSENTRY_[A-Z_]+)=(\S+)", text))
    assert set(env) <= settings_env_names()
    assert f"EXPOSE {env['NETSENTRY_PORT']}" in text
    assert 'CMD ["serve"]' in text and "serve" in cli.commands
    assert "/ping" in text and "USER netsentry" in text


def test_telegraf_conf_for_compose_parses():
    text = (ROOT / "deploy" / "telegraf.conf").read_text()
    config = tomllib.loads(
        text.replace("${RIOT_METRICS_URL}", "http://x").replace("${INFLUX_DB}", "riot")
    )
    assert config["inputs"]["prometheus"][0]["metric_version"] == 1
    assert config["outputs"]["influxdb"][0]["urls"] == ["http://influxdb:8086"]
