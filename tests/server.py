"""A real uvicorn server in a thread, serving one store, for tests that talk HTTP."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from adapter.api import create_app
from adapter.config import Settings
from adapter.store import Store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server in a thread, serving one store."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.port = _free_port()
        self.store = store
        app = create_app(settings, store)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"
        self.client = httpx.Client(base_url=self.base, timeout=60)

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


def _post_export(client: httpx.Client, path: Path, site: str, mapping: str, **form: str) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post("/$ingest", files={"file": (path.name, fh)}, data={"site": site, "mapping": mapping, **form})
