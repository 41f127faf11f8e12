"""No audit event is dropped and reads are not held up while SQLite's single writer is busy
(issue 17, defect 10): AuditEvents that cannot be written at once are spooled to disk and written
afterwards (adapter/store/audit_spool.py)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
from sqlalchemy import func, select

from adapter.auth.audit import audit_event
from adapter.ingest import ingest_file
from adapter.store import Store
from adapter.store.audit_spool import AuditSpool, wait_until_drained
from adapter.store.db import now_instant
from adapter.store.schema import audit_events
from adapter.store.security import AuditTrail
from tests.secure import Secure
from tests.test_concurrency import _large_erm


def _event(path: str = "/Patient/x") -> tuple[dict, dict]:
    ev = audit_event(recorded=now_instant(), method="GET", path=path, status=200, client_id="c", role="site",
                     site="hito", address="127.0.0.1", auth_failure=None)
    return ev, {"client_id": "c", "role": "site", "site": "hito", "status": 200, "method": "GET", "path": path,
                "entity": None}


def _count(store: Store, ids: list[str]) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_events).where(audit_events.c.id.in_(ids))).scalar())


def test_a_busy_sqlite_spools_the_event_and_it_is_written_later(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    store.migrate()
    spool = AuditSpool(AuditTrail(store), tmp_path / "spool", quick_seconds=0.1)
    ev, cols = _event()
    holder = sqlite3.connect(tmp_path / "a.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer (an ingestion) holds the database's write lock
    try:
        assert spool.record(ev, **cols) is False  # not written now: spooled, and the caller goes on
        assert spool.pending() == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert spool.drain() == 1 and spool.pending() == 0
    assert _count(store, [ev["id"]]) == 1
    assert spool.drain() == 0  # written once
    ev2, cols2 = _event("/Observation/y")
    assert spool.record(ev2, **cols2) is True  # free: written at once, nothing spooled


def test_spooled_events_of_a_killed_process_are_written_once(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'a.sqlite3'}")
    store.migrate()
    spool = AuditSpool(AuditTrail(store), tmp_path / "spool")
    spool.folder.mkdir(parents=True)
    events = [_event(f"/Patient/{k}") for k in range(3)]
    dead_pid = 2**22 + 12345  # no such process
    lines = b"".join(orjson.dumps({"event": e, "columns": c}) + b"\n" for e, c in events)
    (spool.folder / f"{dead_pid}-0.ndjson").write_bytes(lines + b'{"event": {"id": "cut')  # cut by the kill
    (spool.folder / f"{dead_pid}-1.draining-{dead_pid}").write_bytes(lines)  # a drain cut short: the same events
    assert spool.drain() == 3
    assert _count(store, [e["id"] for e, _ in events]) == 3
    assert list(spool.folder.iterdir()) == []


def test_reads_during_a_large_sqlite_ingestion_are_answered_and_audited(secure: Secure, tmp_path: Path) -> None:
    """During a 20,000-row ingestion (which holds SQLite's write lock for its whole transaction),
    six concurrent reads are answered while it still runs, and each has its AuditEvent."""
    client = secure.register(f"reader {uuid.uuid4().hex[:6]}", "site", "hito")
    secure.clients["reader"] = client
    http = secure.http("reader")  # the token first: the token endpoint writes (jti), reads do not
    big = _large_erm(tmp_path / "hito_erm_20000.csv", 20_000)
    done = threading.Event()

    def ingest() -> None:
        try:
            assert ingest_file(big, "hito", "erm_citometria", secure.store, settings=secure.settings).stored
        finally:
            done.set()

    worker = threading.Thread(target=ingest)
    worker.start()
    try:
        if secure.store.engine.dialect.name == "sqlite":  # wait until the ingestion holds the write lock
            db = secure.store.engine.url.database
            while not done.is_set():
                probe = sqlite3.connect(db, timeout=0, isolation_level=None)
                try:
                    probe.execute("BEGIN IMMEDIATE")
                    probe.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    break  # locked: the ingestion is writing
                finally:
                    probe.close()
                time.sleep(0.02)
        else:
            time.sleep(0.5)
        paths = [f"/Observation/{secure.ids['hito-observation']}", f"/Patient/{secure.ids['hito-patient']}"] * 3
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda p: http.get(p).status_code, paths))
        answered_during_ingestion = not done.is_set()
    finally:
        worker.join(300)
        http.close()
    assert statuses == [200] * 6
    assert answered_during_ingestion, "the reads waited for the ingestion to finish"
    spool: AuditSpool = secure.srv.server.config.app.state.audit_spool  # type: ignore[attr-defined]
    assert wait_until_drained(spool, 60)
    with secure.store.engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(audit_events).where(
            audit_events.c.client_id == client.client_id, audit_events.c.method == "GET")).scalar()
    assert n == 6  # every read is in the trail: none dropped
    if secure.store.engine.dialect.name == "sqlite":
        assert spool.spooled >= 6  # ... because they waited on disk, not in the request
