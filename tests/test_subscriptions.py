"""R4 rest-hook Subscriptions with a durable outbox: the adapter runs as a real server process
(`adapter serve`, SQLite and PostgreSQL) and the receiver is another real HTTP server. A posted MRD
feed notifies each matching Observation once, a correction notifies again, non-matching resources
notify no one; a receiver that is down gets every event afterwards, in order, once; an adapter
killed with SIGKILL while events are pending delivers them all after its restart."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import ROOT, Settings
from tests.conftest import EXAMPLES, _store_on
from tests.server import _free_port, _post_export
from tests.test_multicenter import _corrected_feed

MRD = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"
UK = EXAMPLES / "uk_infants"


class Receiver:
    """An HTTP server that records every notification (method, path, headers, body) and can be
    stopped (connections refused) and started again on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.got: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.failing: set[str] = set()  # path prefixes answered 500
        self.start()

    def start(self) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                if self.path.startswith("/hang"):
                    time.sleep(30)  # an endpoint that accepts and never answers
                    return
                if any(self.path.startswith(f) for f in outer.failing):
                    self.send_response(500)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                with outer.lock:
                    outer.got.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                      "body": body, "at": time.monotonic()})
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            do_PUT = do_POST = _record  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    def events(self, sid: str) -> list[tuple[int, dict[str, Any]]]:
        with self.lock:
            return [(int(g["headers"]["X-Subscription-Event"]), g) for g in self.got
                    if g["headers"].get("X-Subscription-Id") == sid]

    def events_of(self, sid: str) -> list[dict[str, Any]]:
        """Notification Bundles (Backport) for one subscription, in arrival order."""
        with self.lock:
            return [g["body"] for g in self.got if g["headers"].get("X-Subscription-Id") == sid and g["body"]]

    def arrival(self, sid: str) -> list[float]:
        with self.lock:
            return [g["at"] for g in self.got if g["headers"].get("X-Subscription-Id") == sid]


def _serve(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--port", str(port)], env=env, cwd=ROOT,  # noqa: S603
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


def _wait_for(fn: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.fixture(params=["sqlite", "postgresql"])
def adapter_env(request: pytest.FixtureRequest, tmp_path: Path, settings: Settings) -> Iterator[dict[str, str]]:
    with _store_on(request.param, tmp_path) as store:
        url = store.engine.url.render_as_string(hide_password=False)
        store.engine.dispose()
        yield {**os.environ, "ADAPTER_DATABASE_URL": url, "ADAPTER_ID_KEY": settings.id_key,
               "ADAPTER_EXPORT_DIR": str(tmp_path / "exports"), "ADAPTER_SUBSCRIPTION_BACKOFF_SECONDS": "0.1",
               "ADAPTER_SUBSCRIPTION_BACKOFF_MAX_SECONDS": "0.5"}


def _subscribe(c: httpx.Client, criteria: str, endpoint: str, payload: bool = True) -> str:
    sub = {"resourceType": "Subscription", "status": "requested", "reason": "MRD results for the EHR",
           "criteria": criteria, "channel": {"type": "rest-hook", "endpoint": endpoint,
                                             "header": ["Authorization: Bearer s3cret"],
                                             **({"payload": "application/fhir+json"} if payload else {})}}
    r = c.post("/Subscription", json=sub)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _in_order_once(events: list[tuple[int, dict[str, Any]]]) -> list[int]:
    numbers = [n for n, _ in events]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    return numbers


def test_rest_hook_notifications_survive_a_receiver_outage_and_a_kill(adapter_env: dict[str, str], tmp_path: Path) -> None:
    rx = Receiver()
    port = _free_port()
    proc = _serve(adapter_env, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            # criteria the search does not support, and channels we do not offer, are refused
            bad = c.post("/Subscription", json={"resourceType": "Subscription", "status": "requested", "reason": "x",
                                                "criteria": "Observation?shoe-size=3",
                                                "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:1/"}})
            assert bad.status_code == 422 and "shoe-size" in bad.json()["issue"][0]["diagnostics"]
            bad = c.post("/Subscription", json={"resourceType": "Subscription", "status": "requested", "reason": "x",
                                                "criteria": f"Observation?code={MRD}", "channel": {
                                                    "type": "rest-hook", "endpoint": "http://ehr.example.org/fhir",
                                                    "payload": "application/fhir+json"}})
            assert bad.status_code == 422 and "https" in bad.json()["issue"][0]["diagnostics"]

            endpoint = f"http://127.0.0.1:{rx.port}/fhir"
            every = _subscribe(c, f"Observation?code={MRD}", endpoint)
            positive = _subscribe(c, f"Observation?code={MRD}&value-quantity=ge0.01", endpoint, payload=False)
            _wait_for(lambda: c.get(f"/Subscription/{every}").json()["status"] == "active")

            # 1. the registry (no MRD result) notifies no one; the lab feed notifies each MRD result once
            assert _post_export(c, UK / "uk_infant_blinatumomab_registry.csv", "uk-infants", "registry").status_code == 200
            assert _post_export(c, UK / "uk_mrd_lab_ORU_R01.hl7", "uk-infants", "mrd_lab").status_code == 200
            mrd = c.get("/Observation", params={"code": MRD, "_summary": "count"}).json()["total"]
            pos = c.get("/Observation", params={"code": MRD, "value-quantity": "ge0.01", "_summary": "count"}).json()["total"]
            assert 0 < pos < mrd == 24
            _wait_for(lambda: len(rx.events(every)) == mrd and len(rx.events(positive)) == pos)
            got = rx.events(every)
            _in_order_once(got)
            assert {g["path"].rsplit("/", 1)[1] for _, g in got} == {g["body"]["id"] for _, g in got}
            assert all(g["method"] == "PUT" and g["body"]["code"]["coding"][0]["code"] == "mrd"
                       and g["headers"]["Authorization"] == "Bearer s3cret" for _, g in got)
            assert all(g["method"] == "POST" and g["body"] is None for _, g in rx.events(positive))  # notify only
            _in_order_once(rx.events(positive))

            # 2. a corrected result (OBX-11 "C") notifies again, as an update of the same Observation
            assert _post_export(c, _corrected_feed(tmp_path), "uk-infants", "mrd_lab").status_code == 200
            _wait_for(lambda: len(rx.events(every)) == mrd + 1)
            n, last = rx.events(every)[-1]
            assert n == mrd + 1 and last["body"]["status"] == "corrected" and last["body"]["meta"]["versionId"] == "2"

            # 3. the receiver is down: nothing arrives; back up, every event arrives once, in order
            rx.stop()
            assert _post_export(c, EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria").status_code == 200
            total = c.get("/Observation", params={"code": MRD, "_summary": "count"}).json()["total"]
            time.sleep(1.5)
            before = len(rx.got)
            rx.start()
            _wait_for(lambda: len(rx.events(every)) == total + 1)
            _in_order_once(rx.events(every))
            assert len(rx.got) > before
        # 4. killed with events pending: after the restart every event is delivered, none lost
        rx.stop()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert _post_export(c, EXAMPLES / "huanl" / "huanl_blinatumomab_curso_corto.xlsx", "huanl",
                                "curso_corto").status_code == 200
            total = c.get("/Observation", params={"code": MRD, "_summary": "count"}).json()["total"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        rx.start()
        proc = _serve(adapter_env, port)
        _wait_for(lambda: len({n for n, _ in rx.events(every)}) == total + 1, timeout=60)
        numbers = [n for n, _ in rx.events(every)]
        assert sorted(set(numbers)) == list(range(1, total + 2))  # none missing; a resend keeps its number
    finally:
        proc.terminate()
        proc.wait(10)
        rx.stop()


def test_a_hanging_endpoint_delays_no_one_else_and_failures_set_error_then_resume(tmp_path: Path,
                                                                                  settings: Settings) -> None:
    """Three subscriptions on one MRD feed: one endpoint hangs (5 s timeout), one answers 500 (3
    failures, then status error), one works. The working one is notified within 2 s of the commit
    whatever the others do; the failing one keeps its events and gets them all, in order, once its
    status is set back to active; the channel header never appears in the adapter's logs."""
    rx = Receiver()
    rx.failing.add("/fail")
    port = _free_port()
    log = tmp_path / "adapter.log"
    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "ADAPTER_ID_KEY": settings.id_key,
           "ADAPTER_EXPORT_DIR": str(tmp_path / "exports"), "ADAPTER_SUBSCRIPTION_BACKOFF_SECONDS": "0.1",
           "ADAPTER_SUBSCRIPTION_BACKOFF_MAX_SECONDS": "0.3", "ADAPTER_SUBSCRIPTION_TIMEOUT_SECONDS": "5",
           "ADAPTER_SUBSCRIPTION_MAX_FAILURES": "3"}
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--port", str(port)], env=env, cwd=ROOT,  # noqa: S603
                                stdout=fh, stderr=subprocess.STDOUT)
        try:
            _wait_for(lambda: _up(port))
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
                base = f"http://127.0.0.1:{rx.port}"
                hang = _subscribe(c, f"Observation?code={MRD}", f"{base}/hang")
                fail = _subscribe(c, f"Observation?code={MRD}", f"{base}/fail")
                ok = _subscribe(c, f"Observation?code={MRD}", f"{base}/ok")
                _wait_for(lambda: all(c.get(f"/Subscription/{s}").json()["status"] == "active" for s in (hang, fail, ok)))
                committed = time.monotonic()
                assert _post_export(c, EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria").status_code == 200
                done = time.monotonic()
                mrd = c.get("/Observation", params={"code": MRD, "_summary": "count"}).json()["total"]
                _wait_for(lambda: len(rx.events(ok)) == mrd, timeout=10)
                # waiting behind the hanging endpoint would take >= 5 s (its timeout) per event
                assert max(rx.arrival(ok)) - done < 2.0, "the working endpoint waited on the others"
                assert min(rx.arrival(ok)) > committed
                _in_order_once(rx.events(ok))

                _wait_for(lambda: c.get(f"/Subscription/{fail}").json()["status"] == "error", timeout=20)
                sub = c.get(f"/Subscription/{fail}").json()
                assert "3 failed deliveries" in sub["error"] and rx.events(fail) == []
                rx.failing.clear()
                time.sleep(1)
                assert rx.events(fail) == []  # an error subscription is not delivered to
                sub["status"] = "active"
                sub.pop("error")
                assert c.put(f"/Subscription/{fail}", json=sub).status_code == 200
                _wait_for(lambda: len(rx.events(fail)) == mrd, timeout=20)
                _in_order_once(rx.events(fail))
                assert rx.events(hang) == []
                # the hanging subscription's events stay until it is deleted, then go with it
                db = tmp_path / "db.sqlite3"
                pending_for = "SELECT count(*) FROM subscription_events WHERE subscription_id = ? AND delivered IS NULL"
                with sqlite3.connect(db) as conn:
                    assert conn.execute(pending_for, (hang,)).fetchone()[0] == mrd
                assert c.delete(f"/Subscription/{hang}").status_code in (200, 204)
                with sqlite3.connect(db) as conn:
                    assert conn.execute("SELECT count(*) FROM subscription_events WHERE subscription_id = ?",
                                        (hang,)).fetchone()[0] == 0
        finally:
            proc.terminate()
            proc.wait(10)
            rx.stop()
    text = log.read_text(errors="replace")
    assert "subscription" in text.lower() and "s3cret" not in text


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metadata", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
TOPIC = "https://w3id.org/pedall-fhir/SubscriptionTopic/mrd-result"


def _param(params: dict[str, Any], name: str) -> Any:
    p = next(p for p in params["parameter"] if p["name"] == name)
    return next((v for k, v in p.items() if k.startswith("value")), p.get("part"))


def test_backport_topic_subscription_handshake_heartbeat_notifications_status_and_events(
        tmp_path: Path, settings: Settings) -> None:
    import jsonschema_rs

    schema = jsonschema_rs.validator_for(json.loads((ROOT / "profiles" / "fhir.r4.schema.json").read_text()))
    rx = Receiver()
    rx.failing.add("/refuse")
    port = _free_port()
    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "ADAPTER_ID_KEY": settings.id_key,
           "ADAPTER_EXPORT_DIR": str(tmp_path / "exports")}
    proc = _serve(env, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as c:
            assert _post_export(c, UK / "uk_infant_blinatumomab_registry.csv", "uk-infants", "registry").status_code == 200
            patient = c.get("/Patient", params={"_count": "1"}).json()["entry"][0]["resource"]["id"]

            def backport(endpoint: str, content: str, flt: str, heartbeat: int | None = None) -> dict[str, Any]:
                channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                                           "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content",
                                                                       "valueCode": content}]}}
                if heartbeat:
                    channel["extension"] = [{"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": heartbeat}]
                return {"resourceType": "Subscription", "meta": {"profile": [BACKPORT + "backport-subscription"]},
                        "status": "requested", "reason": "MRD results of one patient", "criteria": TOPIC,
                        "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": flt}]},
                        "channel": channel}

            base = f"http://127.0.0.1:{rx.port}"
            r = c.post("/Subscription", json=backport(f"{base}/bp", "full-resource", f"Observation?patient=Patient/{patient}",
                                                      heartbeat=1))
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            refused = c.post("/Subscription", json=backport(f"{base}/refuse", "id-only", "Observation?interpretation=POS")).json()["id"]
            assert c.post("/Subscription", json={**backport(base, "empty", "Observation?patient=x"),
                                                 "criteria": "https://example.org/other-topic"}).status_code == 422

            # handshake: active when the endpoint accepts it, error when it does not
            _wait_for(lambda: c.get(f"/Subscription/{sid}").json()["status"] == "active")
            _wait_for(lambda: c.get(f"/Subscription/{refused}").json()["status"] == "error")
            assert "handshake" in c.get(f"/Subscription/{refused}").json()["error"]
            hs = rx.events_of(sid)[0]
            assert _param(hs["entry"][0]["resource"], "type") == "handshake"

            # heartbeats while nothing happens
            _wait_for(lambda: any(_param(b["entry"][0]["resource"], "type") == "heartbeat" for b in rx.events_of(sid)),
                      timeout=10)

            assert _post_export(c, UK / "uk_mrd_lab_ORU_R01.hl7", "uk-infants", "mrd_lab").status_code == 200
            mine = c.get("/Observation", params={"code": MRD, "patient": f"Patient/{patient}"}).json()["total"]
            assert mine >= 1

            def notes() -> list[dict[str, Any]]:
                return [b for b in rx.events_of(sid) if _param(b["entry"][0]["resource"], "type") == "event-notification"]

            _wait_for(lambda: len(notes()) == mine)
            numbers = []
            for b in rx.events_of(sid):
                assert b["resourceType"] == "Bundle" and b["type"] == "history"
                assert not [e.message for e in schema.iter_errors(b)][:1]
                status = b["entry"][0]["resource"]
                assert _param(status, "subscription")["reference"].endswith(f"Subscription/{sid}")
                assert _param(status, "topic") == TOPIC
            for b in notes():
                event = _param(b["entry"][0]["resource"], "notification-event")
                numbers.append(int(next(p["valueString"] for p in event if p["name"] == "event-number")))
                focus = next(p["valueReference"]["reference"] for p in event if p["name"] == "focus")
                assert b["entry"][1]["resource"]["id"] == focus.split("/")[1]  # full-resource
                assert b["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{patient}"
            assert numbers == list(range(1, mine + 1))

            # $status and $events
            st = c.get(f"/Subscription/{sid}/$status").json()
            assert not [e.message for e in schema.iter_errors(st)][:1]
            params = st["entry"][0]["resource"]
            assert _param(params, "type") == "query-status" and _param(params, "events-since-subscription-start") == str(mine)
            ev = c.get(f"/Subscription/{sid}/$events", params={"eventsSinceNumber": "1", "eventsUntilNumber": "1",
                                                                "content": "id-only"}).json()
            assert not [e.message for e in schema.iter_errors(ev)][:1]
            assert ev["type"] == "history" and _param(ev["entry"][0]["resource"], "type") == "query-event"
            assert len(ev["entry"]) == 2 and "resource" not in ev["entry"][1]
            assert c.get("/Subscription/nope/$status").status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)
        rx.stop()


def test_two_adapter_processes_share_the_outbox_on_postgresql(tmp_path: Path, settings: Settings) -> None:
    """Two `adapter serve` processes on one PostgreSQL database deliver from the same outbox: every
    event once, each subscription's in order (FOR UPDATE SKIP LOCKED on the head event)."""
    with _store_on("postgresql", tmp_path) as store:
        url = store.engine.url.render_as_string(hide_password=False)
        store.engine.dispose()
        env = {**os.environ, "ADAPTER_DATABASE_URL": url, "ADAPTER_ID_KEY": settings.id_key,
               "ADAPTER_EXPORT_DIR": str(tmp_path / "exports")}
        rx = Receiver()
        ports = [_free_port(), _free_port()]
        procs = [_serve(env, p) for p in ports]
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{ports[0]}", timeout=60) as c:
                subs = [_subscribe(c, f"Observation?code={MRD}", f"http://127.0.0.1:{rx.port}/fhir", payload=k == 0)
                        for k in range(3)]
                assert _post_export(c, UK / "uk_mrd_lab_ORU_R01.hl7", "uk-infants", "mrd_lab").status_code == 200
                assert _post_export(c, EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria").status_code == 200
                total = c.get("/Observation", params={"code": MRD, "_summary": "count"}).json()["total"]
            _wait_for(lambda: all(len(rx.events(s)) >= total for s in subs), timeout=60)
            time.sleep(1)
            for s in subs:
                _in_order_once(rx.events(s))  # no duplicate, none missing, in order
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
            rx.stop()


def test_delivered_events_past_retention_are_pruned_but_numbering_goes_on(store: Any, settings: Settings) -> None:
    """Retention (``subscription_event_retention_days``): delivered events older than the limit go,
    except each subscription's newest; undelivered ones stay; the event count is unchanged."""
    from sqlalchemy import text as sql

    from adapter.ingest import ingest_file
    from adapter.store.outbox import event_count
    from adapter.subscriptions.delivery import DeliveryWorker

    sub = {"resourceType": "Subscription", "id": "retention", "status": "active", "reason": "MRD results",
           "criteria": "Observation?_site=hito", "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/"}}
    with store.transaction() as tx:
        tx.put(sub, "")
    ingest_file(EXAMPLES / "hito" / "hito_erm_citometria.csv", "hito", "erm_citometria", store, settings=settings)
    with store.engine.begin() as conn:
        total = event_count(conn, "retention")
        assert total > 5
        conn.execute(sql("UPDATE subscription_events SET delivered = '2020-01-01T00:00:00.000000+00:00' "
                         "WHERE subscription_id = 'retention' AND event_number <> 3"))
        conn.execute(sql("UPDATE subscription_events SET delivered = :now WHERE subscription_id = 'retention' "
                         "AND event_number = 4"), {"now": "2999-01-01T00:00:00.000000+00:00"})  # recent: kept
    worker = DeliveryWorker(store, settings.model_copy(update={"subscription_event_retention_days": 30}))
    assert worker.prune() == total - 3
    with store.engine.connect() as conn:
        left = [n for (n,) in conn.execute(sql("SELECT event_number FROM subscription_events "
                                               "WHERE subscription_id = 'retention' ORDER BY event_number"))]
        assert left == [3, 4, total] and event_count(conn, "retention") == total
    assert DeliveryWorker(store, settings.model_copy(update={"subscription_event_retention_days": 0})).prune() == 0
