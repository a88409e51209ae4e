"""Telegraf's outputs.influxdb, replayed exactly, against the configurations in docs/telegraf.md.

Telegraf cannot be installed here (no Debian package), so this test speaks its wire
format as its source defines it (plugins/outputs/influxdb/http.go): a form-encoded
``POST /query`` with ``CREATE DATABASE "<db>"``, then ``POST /write?db=<db>`` with
``Content-Type: text/plain; charset=utf-8``, ``Content-Encoding: gzip``, HTTP Basic
auth and no precision parameter (nanoseconds), ``metric_batch_size`` lines a request.
"""

from __future__ import annotations

import gzip
import re
import tomllib
from pathlib import Path

import httpx
import polars as pl

from helpers import TOKEN
from netsentry.config import DetectionSettings
from netsentry.model import KEY_TAGS
from netsentry.service.check import run_check
from netsentry.service.replay import hourly, riot_export
from netsentry.store.sqlite import Store

DOC = Path(__file__).parent.parent / "docs" / "telegraf.md"


def configs() -> list[dict]:
    return [
        tomllib.loads(block) for block in re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.S)
    ]


def escape_tag(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def telegraf_line(row: dict) -> str:
    """Telegraf's serializer, prometheus input v1: tags sorted, counters in `counter`."""
    tags = {t: row[t] for t in KEY_TAGS if row[t]} | {"host": "telegraf-1"}
    field = "counter" if row["measurement"].endswith("_total") else "gauge"
    tag_text = ",".join(f"{k}={escape_tag(v)}" for k, v in sorted(tags.items()))
    return f"{row['measurement']},{tag_text} {field}={row['value']!r} {row['time']}"


def test_documented_configs_match_the_service():
    push, pull_telegraf = configs()[:2]
    output = push["outputs"]["influxdb"][0]
    assert output["urls"] == ["http://127.0.0.1:8000"]  # netsentry's default port
    assert output["password"] == "${NETSENTRY_API_TOKEN}" and output["content_encoding"] == "gzip"
    assert push["inputs"]["prometheus"][0]["metric_version"] == 1
    assert pull_telegraf["outputs"]["influxdb"][0]["database"] == "riot"
    from netsentry.config import Settings

    assert Settings(_env_file=None).port == 8000


def test_telegraf_exchange_lands_every_point(live_server, settings):
    output = configs()[0]["outputs"]["influxdb"][0]
    batch_size = configs()[0]["agent"]["metric_batch_size"]
    auth = httpx.BasicAuth(output["username"], TOKEN)  # ${NETSENTRY_API_TOKEN} substituted
    headers = {"User-Agent": "Telegraf/1.28.5 Go/1.21.3"}
    hours = [chunk for _, chunk in list(hourly(riot_export()))[:12]]
    store = Store(settings.db)
    sent = 0
    with httpx.Client(base_url=live_server, auth=auth, headers=headers) as client:
        created = client.post("/query", data={"q": f'CREATE DATABASE "{output["database"]}"'})
        assert created.status_code == 200 and "error" not in created.json()["results"][0]
        for chunk in hours:  # one flush per hour, as with interval = "1h"
            lines = [telegraf_line(r) for r in chunk.frame.iter_rows(named=True)]
            for start in range(0, len(lines), batch_size):
                body = "\n".join(lines[start : start + batch_size]) + "\n"
                response = client.post(
                    "/write",
                    params={"db": output["database"]},
                    content=gzip.compress(body.encode()),
                    headers={
                        "Content-Type": "text/plain; charset=utf-8",
                        "Content-Encoding": "gzip",
                    },
                )
                assert response.status_code == 204, response.text
                sent += len(lines[start : start + batch_size])
            run_check(store, DetectionSettings())
    assert store.counters()["records_checked"] == sent
    original = pl.concat([c.frame for c in hours]).sort("measurement", "key", "time")
    with store.read() as db:
        stored = db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM entities").fetchone()
    assert stored[1] == original["key"].n_unique()  # same entity keys: host tag not in the key
    state, _ = store.load_state("counter", "tdmp_bytes_total")
    assert state is not None and len(state["key"]) > 0


def test_telegraf_would_drop_a_bad_batch_but_netsentry_keeps_its_good_lines(live_server, settings):
    auth = httpx.BasicAuth("telegraf", TOKEN)
    good = "tdmp_bytes_total,host=h,src=a counter=5 1639069200000000000"
    bad = "tdmp_bytes_total,host=h,src=a counter=five 1639072800000000000"
    response = httpx.post(
        f"{live_server}/write",
        params={"db": "telegraf"},
        auth=auth,
        content=gzip.compress(f"{good}\n{bad}\n".encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 400 and response.json()["error"].startswith("partial write")
    store = Store(settings.db)
    assert len(store.read_inbox(0, store.inbox_head())) == 1


def test_query_accepts_only_create_database(client, auth):
    assert client.post("/query", params={"q": 'CREATE DATABASE "x"'}, headers=auth).json() == {
        "results": [{"statement_id": 0}]
    }
    r = client.post("/query", params={"q": "SELECT * FROM cpu"}, headers=auth)
    assert r.status_code == 400 and "only CREATE DATABASE" in r.json()["error"]
    assert client.post("/query", params={"q": 'CREATE DATABASE "x"'}).status_code == 401
    assert client.get("/ping").status_code == 204
