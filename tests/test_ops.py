"""Running it as a service: health checks, Prometheus metrics, request ids and JSON logs, on a
real server (both backends for health and metrics; the real ``adapter serve`` for the logs)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from adapter.config import Settings
from adapter.store import Store
from tests.conftest import EXAMPLES
from tests.server import Server, _free_port, _post_export


def _samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def _ingest_requests(samples: dict[Any, float]) -> float:
    return sum(v for (name, labels), v in samples.items()
               if name == "http_request_duration_seconds_count" and ("handler", "/$ingest") in labels)


def test_health_live_and_ready(api: Server) -> None:
    assert api.client.get("/health/live").json() == {"status": "pass"}
    ready = api.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "pass", "migrations": "pass"}


def test_ready_fails_when_the_schema_is_behind(tmp_path: Path, settings: Settings) -> None:
    store = Store(f"sqlite:///{tmp_path}/old.sqlite3")
    store.migrate()
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0005'"))
    srv = Server(store, settings)
    try:
        r = srv.client.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["migrations"].startswith("fail: at 0005")
        assert srv.client.get("/health/live").status_code == 200
    finally:
        srv.stop()


def test_metrics_move_when_an_export_is_ingested(api: Server) -> None:
    path = EXAMPLES / "huanl" / "huanl_blinatumomab_curso_corto.xlsx"
    before = _samples(api.client)
    r = _post_export(api.client, path, "huanl", "curso_corto")
    assert r.status_code == 200
    report = json.loads(r.json()["entry"][-1]["response"]["outcome"]["issue"][0]["diagnostics"])
    after = _samples(api.client)
    key = ("adapter_rows_read_total", (("site", "huanl"),))
    assert after[key] - before.get(key, 0) == report["rowsRead"] > 0
    assert ("adapter_rows_rejected_total", (("site", "huanl"),)) in after
    deadline = time.monotonic() + 5  # the request histogram is updated once the response has gone out
    while _ingest_requests(after) != _ingest_requests(before) + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
        after = _samples(api.client)
    assert _ingest_requests(after) == _ingest_requests(before) + 1
    assert after[("adapter_subscription_backlog", ())] >= 0
    assert ("adapter_exports_running", ()) in after
    assert r.headers["x-request-id"]


def test_the_request_id_is_echoed(api: Server) -> None:
    r = api.client.get("/metadata", headers={"X-Request-ID": "ehr-call-42"})
    assert r.headers["x-request-id"] == "ehr-call-42"
    r = api.client.get("/metadata", headers={"X-Request-ID": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces" and len(r.headers["x-request-id"]) == 36


def _identifiers() -> set[str]:
    """Patient names and record numbers of the HITO MRD export (what must never be logged)."""
    rows = list(csv.DictReader(io.StringIO((EXAMPLES / "hito" / "hito_erm_citometria.csv").read_bytes().decode("cp1252")),
                               delimiter=";"))
    names = {r["Nombre del paciente"] for r in rows} | {w for r in rows for w in r["Nombre del paciente"].split() if len(w) > 3}
    return names | {r["Expediente"] for r in rows} | {r["Folio"] for r in rows}


def test_logs_are_json_lines_with_request_ids_and_no_identifiers(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3", "ADAPTER_PORT": str(port),
           "ADAPTER_EXPORT_DIR": str(tmp_path / "exports"), "ADAPTER_PSEUDONYM_KEY": "log-test"}
    exe = Path(sys.executable).parent / "adapter"
    proc = subprocess.Popen([str(exe), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # noqa: S603
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "adapter serve did not start"
            time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=60) as c:
            r = _post_export(c, EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria")
            assert r.status_code == 200
            mrn = sorted(_identifiers())[0]
            ids = []
            for url in (f"/Patient?identifier={mrn}", "/Patient?name=RAMOS", "/Observation/not-here", "/outcomes"):
                ids.append(c.get(url, headers={"X-Request-ID": f"t-{len(ids)}"}).headers["x-request-id"])
            assert c.put("/Patient/x", content=b"{not json", headers={"content-type": "application/fhir+json"}).status_code == 400
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    lines = [ln for ln in err.splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert records and all({"timestamp", "level", "event"} <= set(r) for r in records)
    requests = [r for r in records if r.get("logger") == "adapter.access"]
    assert {r["request_id"] for r in requests} >= set(ids) == {"t-0", "t-1", "t-2", "t-3"}
    assert all("?" not in r["path"] for r in requests)
    assert any(r["path"] == "/$ingest" and r["status"] == 200 for r in requests)
    whole = err + "\n"
    leaked = [v for v in _identifiers() if v in whole]
    assert leaked == [], leaked[:3]
