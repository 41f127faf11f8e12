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
        self.client = httpx.Client(base_url=self.base, timeout=60, event_hooks={"response": [check_response]})

    def stop(self) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)


#: How many FHIR response bodies the tests' servers sent, and how many resources in them were
#: checked against the R4 core invariants (tests/test_validation.py reports the count).
CHECKED = {"responses": 0, "resources": 0}


def check_response(response: httpx.Response) -> None:
    """Every FHIR JSON body a test server answers with (a resource, a Bundle with its entries, an
    OperationOutcome) must pass the R4 core invariants (adapter/validation/invariants.py); a
    response that breaks one fails the test that made the request, naming the invariant."""
    if not response.headers.get("content-type", "").startswith("application/fhir+json"):
        return
    response.read()
    if not response.content:
        return
    import orjson

    from adapter.validation.invariants import core_invariants

    try:
        doc = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise AssertionError(f"{response.request.method} {response.request.url}: a FHIR JSON response that is not JSON") from None
    if not isinstance(doc, dict) or "resourceType" not in doc:
        return
    broken = core_invariants().violations(doc)
    CHECKED["responses"] += 1
    CHECKED["resources"] += 1 + len(doc.get("entry") or []) if doc["resourceType"] == "Bundle" else 1
    assert not broken, (f"{response.request.method} {response.request.url.path}: the response breaks R4 core "
                        f"invariants: {[(v.location, v.key) for v in broken][:5]}")


def _post_export(client: httpx.Client, path: Path, site: str, mapping: str, **form: str) -> httpx.Response:
    with path.open("rb") as fh:
        return client.post("/$ingest", files={"file": (path.name, fh)}, data={"site": site, "mapping": mapping, **form})
