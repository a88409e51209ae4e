"""A real Prometheus (Debian's package) scraping a test exporter, both on loopback."""

from __future__ import annotations

from pathlib import Path

from servers import ServerProcess, free_port, http_ok


def prometheus(tmp: Path, targets: list[str], scrape_ms: int = 1000) -> tuple[ServerProcess, str]:
    """A Prometheus on a free port scraping ``targets`` (host:port) every ``scrape_ms``."""
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(
        "global:\n"
        f"  scrape_interval: {scrape_ms}ms\n"
        f"  evaluation_interval: {scrape_ms}ms\n"
        "scrape_configs:\n"
        "  - job_name: netsentry-test\n"
        "    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        "prometheus",
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        http_ok(f"{url}/-/ready"),
        tmp / "prometheus.log",
    )
    return server, url
