import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


import httpx

from helpers import TOKEN
from mosquitto_server import mosquitto_server
from netsentry.respond.riot import RiotClient
from riot_standin import HA1, USER, StandIn, riot_settings
from servers import free_port


@pytest.fixture
def settings(tmp_path):
    from pydantic import SecretStr

    from netsentry.config import Settings

    return Settings(db=tmp_path / "api.sqlite", api_token=SecretStr(TOKEN), _env_file=None)


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from netsentry.api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def auth():
    return {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def live_server(settings):
    """The real app under a real uvicorn on a free loopback port."""
    import uvicorn

    from netsentry.api.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


# -- the stand-in RIoT server (tests/riot_standin.py) ---------------------------------


@pytest.fixture
def riot():
    stand = StandIn({USER: HA1})
    stand.start()
    yield stand
    stand.stop()
    assert stand.disagreements == []


@pytest.fixture(scope="module")
def shared_riot():
    stand = StandIn({USER: HA1})
    stand.start()
    with httpx.Client() as http:  # one pool for every example (the caller's client)
        yield stand, RiotClient(riot_settings(stand), http=http)
    stand.stop()


@pytest.fixture
def riot_client(riot):
    with RiotClient(riot_settings(riot)) as client:
        yield client


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A real Mosquitto on a free loopback port (TCP_NODELAY on); yields the port."""
    server, port = mosquitto_server(tmp_path_factory.mktemp("mosquitto"))
    server.start()
    yield port
    server.stop()
