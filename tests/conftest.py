import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

TOKEN = "test-token-0123456789abcdef"


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
