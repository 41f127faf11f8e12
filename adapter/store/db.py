"""The resource store: versioned FHIR resources as JSON in SQLite (embedded default) or PostgreSQL.

Only this module (with the readers and the API) does database I/O. Writes happen in one transaction
per ingestion (:meth:`Store.transaction`), so a failure midway leaves the store as it was.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, Table, bindparam, create_engine, event, func, select, tuple_
from sqlalchemy.exc import SQLAlchemyError

from adapter.errors import StoreBusy, StoreError
from adapter.search.params import index_entries, index_text
from adapter.store.courses import read_cohort, refresh_courses, stale_patients
from adapter.store.schema import ingestions, resource_history, resources, search_index

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def now_instant() -> str:
    """Current time as a FHIR ``instant`` in UTC with microseconds (sortable as text)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


def content_hash(resource: dict[str, Any]) -> str:
    """SHA-256 of the resource's canonical JSON without ``meta.versionId``/``meta.lastUpdated``."""
    meta = resource.get("meta")
    body = resource
    if meta and ("versionId" in meta or "lastUpdated" in meta):
        body = {**resource, "meta": {k: v for k, v in meta.items() if k not in ("versionId", "lastUpdated")}}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


_FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def _search_columns(r: dict[str, Any]) -> dict[str, Any]:
    """The ``resources`` row's search columns. Each holds a value only when it fits its column and
    means what the column says: a ``patient_id`` that is a valid FHIR id (a reference to
    ``Patient/<longer text>`` names no Patient), a ``code``/``code_system`` hashed past the column's
    width (adapter/search/params.py ``index_text``), an ``effective``/``status`` only when short
    enough to be a FHIR dateTime or code. The resource itself is always stored whole."""
    subject = r.get("subject") or r.get("patient") or r.get("individual") or {}
    ref = subject.get("reference", "") if isinstance(subject, dict) else ""
    patient = ref.split("/", 1)[1] if isinstance(ref, str) and ref.startswith("Patient/") else (
        r["id"] if r["resourceType"] == "Patient" else None)
    if patient is not None and not _FHIR_ID.match(patient):
        patient = None
    code = r.get("code") or r.get("event") or r.get("medicationCodeableConcept") or {}
    coding = (code.get("coding") or [{}])[0] if isinstance(code, dict) and isinstance(code.get("coding"), list) else {}
    coding = coding if isinstance(coding, dict) else {}
    effective = (r.get("effectiveDateTime") or (r.get("effectivePeriod") or {}).get("start") or r.get("date")
                 or r.get("performedDateTime") or (r.get("period") or {}).get("start") or r.get("recorded"))
    return {"patient_id": patient, "code_system": index_text(_fits(coding.get("system"))),
            "code": index_text(_fits(coding.get("code")), 128), "effective": _fits(effective, 40),
            "status": _fits(r.get("status"), 32)}


def _fits(value: Any, width: int | None = None) -> str | None:
    """``value`` when it is text (of at most ``width`` characters), else ``None``."""
    return value if isinstance(value, str) and (width is None or len(value) <= width) else None


#: Statuses of a result that corrects an earlier one (FHIR R4 ObservationStatus).
CORRECTED = ("corrected", "amended")

_EXISTING = (select(resources.c.id, resources.c.version_id, resources.c.content_hash, resources.c.deleted,
                    resources.c.patient_id, resources.c.status, resources.c.site, resources.c.ingested_hash,
                    resources.c.rid)
             .where(resources.c.type == bindparam("type"), resources.c.id.in_(bindparam("ids", expanding=True))))
#: The same probe taking row locks (PostgreSQL ``FOR UPDATE``): concurrent writers of one resource
#: queue on its row, and each reads the version the one before it committed (READ COMMITTED
#: re-reads a locked row once the lock is released), so two never claim the same next version.
_EXISTING_LOCKED = _EXISTING.with_for_update()

#: Sites whose resources any site may reference (the network's ResearchStudy and study Group, and
#: resources written with no site in development mode).
SHARED_SITES = ("", "network")

T = TypeVar("T")


@dataclass(frozen=True)
class WriteOutcome:
    """What happened to one resource: ``created``, ``updated`` or ``unchanged``, and its version.
    ``note`` (ingestion only): ``kept-api-version`` when a version written through the REST API
    since the last ingestion was kept (the file's row is unchanged since then), or
    ``replaced-api-version`` when the file changed the row too and its content replaced that
    version (see :meth:`Transaction.upsert`)."""

    type: str
    id: str
    version_id: int
    outcome: str
    note: str | None = None


class Transaction:
    """Writes inside one database transaction (see :meth:`Store.transaction`)."""

    def __init__(self, conn: Connection, site: str | None = None) -> None:
        self.conn = conn
        #: When set, this transaction acts for a client bound to this site: resources of other
        #: sites read as missing and cannot be written (:class:`OutsideSite`).
        self.site_scope = site
        #: Patients whose compartment this transaction changed (their course is rebuilt at commit)
        self.touched_patients: set[str] = set()
        #: Resources a site-bound client wrote in this transaction, whose references are checked
        #: before it commits (adapter/api/writes.py ``check_site_references``)
        self.written_by_site: list[dict[str, Any]] = []
        #: Who this transaction writes for (adapter/auth/policy.py Principal), when it is a REST
        #: request: a Subscription it writes records it as the owner (adapter/store/outbox.py)
        self.principal: Any = None
        #: The service's settings, when the write comes through the REST API (its policies, e.g.
        #: the subscription endpoint allow-list)
        self.settings: Any = None
        if conn.dialect.name == "postgresql":
            # The rows this transaction writes are invisible to the planner's statistics, so a table
            # that was small when the transaction began stays "small" and each existence probe
            # becomes a sequential scan: O(n^2) over a large file. Every query here is a
            # primary-key probe or an insert, so the index is always the right plan.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")

    def upsert(self, batch: list[tuple[dict[str, Any], str, str | None]],
               keep_corrections: bool = False, lock_rows: bool = False, ingested: bool = False) -> list[WriteOutcome]:
        """Store resources, each as ``(resource, site code, content hash or None)``; the hash is
        :func:`content_hash` (computed when ``None``). Unchanged content keeps its version; changed
        content gets version n+1 and a history row. Sets ``meta.versionId``/``meta.lastUpdated`` on
        the dicts passed in. Resource ids must be unique within the batch.

        ``keep_corrections`` (ingestion): a stored result whose status is ``corrected`` or ``amended``
        is not replaced by one that is not (the original of a corrected result, in a feed posted
        again; FHIR R4 ObservationStatus); the write is reported ``unchanged``.

        ``lock_rows`` (PostgreSQL): lock the stored rows first (see :data:`_EXISTING_LOCKED`).

        ``ingested`` (an ingestion writes): each row remembers the content an ingestion last wrote
        (``ingested_hash``), and a three-way rule decides between the file and a change made since
        through the REST API (an update or a delete): when the file's content is what the last
        ingestion wrote, the file has not changed the record and the API's version stays
        (``unchanged``, note ``kept-api-version``); when the file changed it as well, the file's
        content is stored (note ``replaced-api-version``). Either way the ingestion report names
        the resource, so nothing is reverted or kept in silence.

        A stored resource never moves to another site: writing it with a different site code
        raises :class:`OutsideSite` (ids are keyed hashes of site and source keys, so this only
        happens when a write aims at another site's resource)."""
        if not batch:
            return []
        existing: dict[tuple[str, str], tuple[int, str, bool, str | None, str | None, str, str | None, int]] = {}
        ids_by_type: dict[str, list[str]] = {}
        for r, _, _ in batch:
            ids_by_type.setdefault(r["resourceType"], []).append(r["id"])
        probe = _EXISTING_LOCKED if lock_rows and self.conn.dialect.name == "postgresql" else _EXISTING
        for rtype, ids in ids_by_type.items():
            for i in range(0, len(ids), 500):  # type = ? AND id IN (...): a primary-key probe per id
                rows = self.conn.execute(probe, {"type": rtype, "ids": sorted(ids[i:i + 500])})
                for rid, v, h, deleted, pid, status, site, ingested_hash, number in rows:
                    existing[(rtype, rid)] = (v, h, bool(deleted), pid, status, site, ingested_hash, number)
        stamp = now_instant()
        inserts, updates, history, out = [], [], [], []
        entries: list[tuple[dict[str, Any], list[tuple[Any, ...]]]] = []  # (row, its search index entries)
        rebaselined: list[dict[str, Any]] = []
        for r, site, known_hash in batch:
            key = (r["resourceType"], r["id"])
            h = known_hash or content_hash(r)
            prev = existing.get(key)
            note = None
            if prev is not None and prev[5] != site:
                raise OutsideSite(f"{key[0]}/{key[1]} belongs to another site and cannot be written as site {site or '(none)'}",
                                  found=False)
            if prev is not None and not prev[2] and (prev[1] == h or (
                    keep_corrections and prev[4] in CORRECTED and r.get("status") not in CORRECTED)):
                if ingested and prev[1] == h and prev[6] != h:  # the API wrote what the file now says
                    rebaselined.append({"b_type": key[0], "b_id": key[1], "ingested_hash": h})
                out.append(WriteOutcome(key[0], key[1], prev[0], "unchanged"))
                continue
            if ingested and prev is not None and prev[6] is not None and (prev[2] or prev[1] != prev[6]):
                # the stored version (or deletion) was written through the API since the last ingestion
                if prev[6] == h:  # ... and the file's row has not changed since: keep the API's version
                    out.append(WriteOutcome(key[0], key[1], prev[0], "unchanged", "kept-api-version"))
                    continue
                note = "replaced-api-version"
            version = 1 if prev is None else prev[0] + 1
            meta = dict(r.get("meta") or {})
            meta["versionId"] = str(version)
            meta["lastUpdated"] = stamp
            r["meta"] = {"versionId": meta.pop("versionId"), "lastUpdated": meta.pop("lastUpdated"), **meta}
            text = orjson.dumps(r).decode()
            row = {"type": key[0], "id": key[1], "version_id": version, "last_updated": stamp, "site": site,
                   "content_hash": h, "deleted": False, "resource": text, "created": stamp, **_search_columns(r)}
            if ingested:
                row["ingested_hash"] = h
            if prev is not None:
                row["rid"] = prev[7]
            (inserts if prev is None else updates).append(row)
            if row["patient_id"]:
                self.touched_patients.add(row["patient_id"])
            if prev is not None and prev[3]:  # a resource moved to another patient leaves the old one
                self.touched_patients.add(prev[3])
            entries.append((row, index_entries(r)))
            history.append({"type": key[0], "id": key[1], "version_id": version, "last_updated": stamp,
                            "method": "POST" if prev is None else "PUT", "resource": text})
            out.append(WriteOutcome(key[0], key[1], version, "created" if prev is None else "updated", note))
        if rebaselined:
            self.conn.execute(resources.update().where(resources.c.type == bindparam("b_type"),
                                                       resources.c.id == bindparam("b_id"))
                              .values(ingested_hash=bindparam("ingested_hash")), rebaselined)
        if inserts:
            for row, number in zip(inserts, self._new_numbers(len(inserts)), strict=True):
                row["rid"] = number
            self._insert_many(resources, inserts)
        if updates:
            self._drop_index([u["rid"] for u in updates])
            cols = [c for c in updates[0] if c not in ("type", "id", "created", "rid")]
            stmt = (resources.update()
                    .where(resources.c.type == bindparam("b_type"), resources.c.id == bindparam("b_id"))
                    .values({c: bindparam(c) for c in cols}))
            self.conn.execute(stmt, [{**{c: u[c] for c in cols}, "b_type": u["type"], "b_id": u["id"]} for u in updates])
        if history:
            self._insert_many(resource_history, history)
        index = [(row["type"], row["rid"], *e) for row, es in entries for e in es]
        if index:
            self._insert_tuples(search_index, index)
        pids = {(r["type"], r["id"]): r["patient_id"] for r in (*inserts, *updates)}
        changed = [(o.type, o.id, o.version_id, pids.get((o.type, o.id))) for o in out if o.outcome != "unchanged"]
        if changed:
            from adapter.store.outbox import record_events  # the subscription outbox, in this transaction

            record_events(self.conn, changed, stamp)
        return out

    def _drop_index(self, numbers: list[int]) -> None:
        """Delete the search index rows of the resources numbered ``numbers`` (``resources.rid``)."""
        self.conn.execute(search_index.delete().where(search_index.c.rid == bindparam("r")), [{"r": n} for n in numbers])

    def _new_numbers(self, n: int) -> list[int]:
        """``n`` resource numbers (``resources.rid``, revision 0011) that no resource has, each larger
        than every number given before: from the sequence ``resources_rid_seq`` on PostgreSQL (one
        round trip; numbers of a rolled-back transaction are skipped, never reused), and on SQLite
        the largest stored number plus one onwards, which is safe because a write transaction holds
        SQLite's write lock from its start (:func:`_sqlite_begin`, ``BEGIN IMMEDIATE``) and sees
        its own inserts."""
        if self.conn.dialect.name == "postgresql":
            rows = self.conn.exec_driver_sql(
                "SELECT nextval('resources_rid_seq') FROM generate_series(1, %(n)s)", {"n": n})
            return sorted(int(r[0]) for r in rows)
        top = int(self.conn.execute(select(func.coalesce(func.max(resources.c.rid), 0))).scalar_one())
        return list(range(top + 1, top + 1 + n))

    def _insert_many(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """One ``executemany`` INSERT of plain parameter tuples (the hot path of ingestion: it skips
        SQLAlchemy's per-row parameter processing, which the columns here do not need)."""
        cols = [c.name for c in table.columns]
        self._insert_tuples(table, [tuple(r.get(c) for c in cols) for r in rows])

    def _insert_tuples(self, table: Table, rows: list[tuple[Any, ...]]) -> None:
        """``executemany`` INSERT of tuples in the table's column order."""
        cols = [c.name for c in table.columns]
        mark = "?" if self.conn.dialect.paramstyle == "qmark" else "%s"
        # names come from our own table definitions, never from input; values are bound parameters
        sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join([mark] * len(cols))})"  # noqa: S608
        self.conn.exec_driver_sql(sql, rows)

    def missing(self, rtype: str, ids: list[str]) -> set[str]:
        """The ``ids`` with no current (non-deleted) resource of type ``rtype``."""
        found: set[str] = set()
        for i in range(0, len(ids), 500):
            rows = self.conn.execute(_EXISTING, {"type": rtype, "ids": ids[i:i + 500]})
            found.update(rid for rid, _v, _h, deleted, *_ in rows if not deleted)
        return set(ids) - found

    def current_resources(self, rtype: str, ids: list[str], site: str) -> dict[str, dict[str, Any]]:
        """The current (not deleted) resources of type ``rtype`` among ``ids`` that belong to
        ``site``, by id (500 ids a query)."""
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            rows = self.conn.execute(select(resources.c.id, resources.c.resource).where(
                resources.c.type == rtype, resources.c.id.in_(ids[i:i + 500]), resources.c.deleted.is_(False),
                resources.c.site == site))
            out.update({rid: orjson.loads(text) for rid, text in rows})
        return out

    def patient_ids(self, site: str | None = None) -> list[str]:
        """Ids of the current Patients (of one site, or all), in id order."""
        q = select(resources.c.id).where(resources.c.type == "Patient", resources.c.deleted.is_(False))
        if site is not None:
            q = q.where(resources.c.site == site)
        return [rid for (rid,) in self.conn.execute(q.order_by(resources.c.id))]

    def record_ingestion(self, row: dict[str, Any]) -> None:
        """Keep an ingestion's report (see :class:`adapter.ingest.IngestReport`)."""
        self.conn.execute(ingestions.insert(), [row])

    # ------------------------------------------------------------- single-resource writes (REST API)

    def current(self, rtype: str, rid: str, lock: bool = False) -> tuple[int, bool, str] | None:
        """``(version, deleted, site)`` of a stored resource, or ``None`` when it never existed
        (or, in a site-scoped transaction, belongs to another site). ``lock``: PostgreSQL row lock
        until the transaction ends (the version read is then the one a write will follow)."""
        row = self._row(rtype, rid, lock)
        if row is None or (self.site_scope is not None and row[2] != self.site_scope):
            return None
        return row

    def _row(self, rtype: str, rid: str, lock: bool = False) -> tuple[int, bool, str] | None:
        q = select(resources.c.version_id, resources.c.deleted, resources.c.site).where(
            resources.c.type == rtype, resources.c.id == rid)
        if lock and self.conn.dialect.name == "postgresql":
            q = q.with_for_update()
        row = self.conn.execute(q).first()
        return None if row is None else (int(row[0]), bool(row[1]), row[2])

    def sites_of(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """The site of each current (not deleted) resource among ``keys`` (``(type, id)``); keys
        with no current resource are absent from the result. One primary-key query per 500 keys."""
        out: dict[tuple[str, str], str] = {}
        ordered = sorted(keys)
        for k in range(0, len(ordered), 500):
            rows = self.conn.execute(select(resources.c.type, resources.c.id, resources.c.site).where(
                tuple_(resources.c.type, resources.c.id).in_(ordered[k:k + 500]), resources.c.deleted.is_(False)))
            out.update({(t, rid): site for t, rid, site in rows})
        return out

    def put(self, resource: dict[str, Any], site: str, if_match: int | None = None) -> WriteOutcome:
        """Create or update one resource (FHIR R4 §3.1.0.4 update; §3.1.0.5 "version-aware updates").
        ``if_match`` is the version the client last saw; a different current version (or a missing
        resource) raises :class:`VersionConflict`. Unchanged content keeps its version.

        In a site-scoped transaction, raises :class:`OutsideSite` when the resource exists in
        another site (it is reported as not found) or would be stored in another site."""
        raw = self._row(resource["resourceType"], resource["id"], lock=True)  # writers of one resource queue here
        if self.site_scope is not None:
            if raw is not None and raw[2] != self.site_scope:
                raise OutsideSite(f"{resource['resourceType']}/{resource['id']} is not known", found=False)
            if raw is None and site != self.site_scope:
                raise OutsideSite(f"a {resource['resourceType']} written by a client of site {self.site_scope} must "
                                  f"belong to that site (its subject must be one of the site's Patients)", found=True)
        cur = raw
        if if_match is not None and (cur is None or cur[1] or cur[0] != if_match):
            found = "no current version" if cur is None or cur[1] else f"version {cur[0]}"
            raise VersionConflict(f"If-Match asked for version {if_match}, but the resource has {found}")
        if cur is not None:
            site = cur[2]  # a resource stays in the site (compartment) it was created in, deleted or not
        return self.upsert([(resource, site, None)])[0]

    def delete(self, rtype: str, rid: str, if_match: int | None = None) -> int | None:
        """Delete a resource (FHIR R4 §3.1.0.7): it gets a new version marked deleted in the history,
        and reads answer 410. Returns the deletion's version, or ``None`` when there was nothing to
        delete. Raises :class:`VersionConflict` when ``if_match`` is not the current version."""
        cur = self.current(rtype, rid, lock=True)
        if if_match is not None and (cur is None or cur[1] or cur[0] != if_match):
            raise VersionConflict(f"If-Match asked for version {if_match}, but the resource is not at that version")
        if cur is None or cur[1]:
            return None
        version, stamp = cur[0] + 1, now_instant()
        body, pid, number = self.conn.execute(select(resources.c.resource, resources.c.patient_id, resources.c.rid).where(
            resources.c.type == rtype, resources.c.id == rid)).one()
        if pid:
            self.touched_patients.add(pid)
        if rtype == "Subscription":
            from adapter.store.outbox import drop_events

            drop_events(self.conn, rid)
        self.conn.execute(resources.update().where(resources.c.type == rtype, resources.c.id == rid).values(
            version_id=version, last_updated=stamp, deleted=True))
        self.conn.execute(resource_history.insert().values(type=rtype, id=rid, version_id=version, last_updated=stamp,
                                                           method="DELETE", resource=body))
        self._drop_index([number])
        return version

    def lock(self, key: str) -> None:
        """Serialise transactions that check-then-write the same key (conditional creates and
        updates of one resource type) until this transaction ends. PostgreSQL: a transaction-level
        advisory lock; SQLite: write transactions already run one at a time (``BEGIN IMMEDIATE``)."""
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(key, 0))))

    def lock_within(self, key: str, seconds: float, what: str) -> None:
        """Take the advisory lock ``key`` (as :meth:`lock`), waiting at most ``seconds``; raises
        :class:`StoreBusy` (HTTP 503, ``Retry-After``) naming ``what`` when it stays taken. SQLite:
        the write transaction already holds the database's only write lock."""
        if self.conn.dialect.name != "postgresql":
            return
        deadline = time.monotonic() + seconds
        pause = 0.02
        while not self.conn.execute(select(func.pg_try_advisory_xact_lock(func.hashtextextended(key, 0)))).scalar():
            if time.monotonic() >= deadline:
                raise StoreBusy(f"{what} is in progress; try again later", retry_after=max(1, int(seconds)))
            time.sleep(pause)
            pause = min(0.25, pause * 1.5)

    def search(self, query: Any, snapshot: str | None = None) -> Any:
        """Run a search inside this transaction (for conditional operations)."""
        from adapter.store.search import run_search

        return run_search(self.conn, query, snapshot or now_instant(), self.site_scope)


class OutsideSite(StoreError):
    """A site-scoped write that touches another site's data: ``found=False`` means the target
    reads as missing (HTTP 404); ``found=True`` that the new resource would belong to another site
    (HTTP 403)."""

    def __init__(self, message: str, found: bool) -> None:
        super().__init__(message)
        self.found = found


class VersionConflict(StoreError):
    """A version-aware write (``If-Match``) found a different current version (HTTP 412)."""


class WriteConflict(StoreError):
    """The database refused a write because a concurrent transaction wrote the same rows first
    (unique violation, deadlock, serialization failure). Nothing was stored; :meth:`Store.run`
    runs the work again."""


class Rollback(Exception):  # noqa: N818  (control flow, not an error)
    """Raise inside :meth:`Store.transaction` to discard everything written (dry runs, --strict)."""


#: PostgreSQL SQLSTATEs of a write that lost a race and succeeds when run again: unique_violation
#: (two transactions created the same row), deadlock_detected, serialization_failure.
_RETRYABLE = {"23505", "40P01", "40001"}
#: ... and of a write that waited too long for a lock: lock_not_available, query_canceled.
_BUSY = {"55P03", "57014"}


def _classify(exc: SQLAlchemyError) -> StoreError:
    """The store error for a database exception: :class:`WriteConflict` (run it again),
    :class:`StoreBusy` (waited too long for a lock) or :class:`StoreError`."""
    orig = getattr(exc, "orig", None)
    state = getattr(orig, "sqlstate", None)
    text = str(orig or exc).lower()
    brief = f"{exc.__class__.__name__}: {str(orig or exc).splitlines()[0][:200]}"
    if state in _RETRYABLE or "unique constraint failed" in text:
        return WriteConflict(f"a concurrent write to the same resources ({brief})")
    if state in _BUSY or "database is locked" in text or "database is busy" in text:
        return StoreBusy("the database is busy with another write; try again later")
    return StoreError(f"the database refused the write: {brief}")


class Store:
    """A database of versioned resources. ``url`` is an SQLAlchemy URL (``sqlite:///path`` or
    ``postgresql+psycopg://...``). ``busy_seconds``: how long an SQLite writer waits for the
    database's write lock before giving up (:class:`StoreBusy`)."""

    def __init__(self, url: str, engine: Engine | None = None, busy_seconds: float = 30.0) -> None:
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        self.url = url
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        # psycopg prepares a statement on the server after 5 executions and may keep a generic plan
        # made while the table was small; inside one large ingestion transaction that plan decays
        # (measured: 2,000-resource batches slowed from 1.0 s to 3.9 s). Plan each query afresh.
        connect_args: dict[str, Any] = {"prepare_threshold": None} if url.startswith("postgresql+psycopg") else {}
        if url.startswith("sqlite"):
            connect_args["timeout"] = busy_seconds  # sqlite3's busy timeout: how long BEGIN IMMEDIATE waits
        self.engine = engine or create_engine(url, future=True, connect_args=connect_args)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
            event.listen(self.engine, "begin", _sqlite_begin)

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with self.engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot migrate the database: {exc.__class__.__name__}: {str(exc)[:200]}") from None

    def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` when not migrated)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    @contextmanager
    def transaction(self, site: str | None = None) -> Iterator[Transaction]:
        """One database transaction. Commits on success; rolls back on any exception (re-raised,
        except :class:`Rollback`). Database errors become :class:`WriteConflict` (a lost race:
        :meth:`run` runs the work again), :class:`StoreBusy` or :class:`StoreError`. ``site``: the
        transaction acts for a client bound to that site (see :class:`Transaction`)."""
        try:
            with self.engine.connect() as conn:
                conn.execution_options(adapter_write=True)
                with conn.begin():
                    tx = Transaction(conn, site)
                    yield tx
                    refresh_courses(conn, tx.touched_patients, tx)
        except Rollback:
            return
        except SQLAlchemyError as exc:
            raise _classify(exc) from None

    def run(self, work: Callable[[Transaction], T], site: str | None = None, attempts: int = 8) -> T | None:
        """Run ``work(tx)`` in one transaction (:meth:`transaction`) and return what it returns;
        when the database reports a lost race (:class:`WriteConflict`: two transactions created
        the same row, or deadlocked), roll back and run it again, up to ``attempts`` times with a
        short random pause (PostgreSQL manual §13.2 "Transaction Isolation": applications retry
        such transactions). Returns ``None`` when ``work`` raised :class:`Rollback`.

        Raises:
            StoreBusy: the conflicts kept coming back, or a lock was not had in time.
            StoreError: any other database refusal. Exceptions of ``work`` pass through."""
        for attempt in range(1, attempts + 1):
            box: list[T] = []
            try:
                with self.transaction(site) as tx:
                    box.append(work(tx))
                return box[0] if box else None
            except WriteConflict:
                if attempt == attempts:
                    raise StoreBusy(f"the write kept conflicting with concurrent writes ({attempts} attempts); "
                                    "try again", retry_after=1) from None
                time.sleep(random.uniform(0.005, 0.02) * 2 ** min(attempt, 5))  # noqa: S311  (jitter)
        return None

    # -------------------------------------------------------------------------------------- reads

    def read(self, rtype: str, rid: str, site: str | None = None) -> dict[str, Any] | None:
        """The current version of a resource, or ``None`` (also when ``site`` is given and the
        resource belongs to another site)."""
        with self.engine.connect() as conn:
            text = conn.execute(select(resources.c.resource).where(
                resources.c.type == rtype, resources.c.id == rid, resources.c.deleted.is_(False),
                *_in_site(site))).scalar()
        return None if text is None else orjson.loads(text)

    def read_state(self, rtype: str, rid: str, site: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """``("ok", resource)``, ``("deleted", None)`` (FHIR: 410 Gone) or ``("missing", None)``
        (also for another site's resource when ``site`` is given)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(resources.c.resource, resources.c.deleted).where(
                resources.c.type == rtype, resources.c.id == rid, *_in_site(site))).first()
        if row is None:
            return "missing", None
        return ("deleted", None) if row[1] else ("ok", orjson.loads(row[0]))

    def vread(self, rtype: str, rid: str, version: int, site: str | None = None) -> tuple[str, dict[str, Any] | None]:
        """One version: ``("ok", resource)``, ``("deleted", None)`` when that version is a deletion,
        or ``("missing", None)`` (also for another site's resource when ``site`` is given)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(resource_history.c.resource, resource_history.c.method).where(
                resource_history.c.type == rtype, resource_history.c.id == rid,
                resource_history.c.version_id == version, *_history_in_site(site))).first()
        if row is None:
            return "missing", None
        return ("deleted", None) if row[1] == "DELETE" else ("ok", orjson.loads(row[0]))

    def history_entries(self, rtype: str, rid: str, site: str | None = None) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Every version, newest first (FHIR R4 §3.1.0.9 history order): ``(version, lastUpdated,
        method, resource)``; for a deletion, ``resource`` is the body that was deleted. With
        ``site``, another site's resource has no history (empty list)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(resource_history.c.version_id, resource_history.c.last_updated,
                                       resource_history.c.method, resource_history.c.resource).where(
                resource_history.c.type == rtype, resource_history.c.id == rid, *_history_in_site(site))
                .order_by(resource_history.c.version_id.desc()))
            return [(int(v), lu, m, orjson.loads(t)) for v, lu, m, t in rows]

    def search(self, query: Any, snapshot: str | None = None, site: str | None = None) -> Any:
        """Run a parsed search (:class:`adapter.search.query.Query`) as of ``snapshot`` (default: now);
        returns :class:`adapter.store.search.SearchResult`. With ``site``, matches and included
        resources are only that site's."""
        from adapter.store.search import run_search

        with self.engine.connect() as conn:
            return run_search(conn, query, snapshot or now_instant(), site)

    def history(self, rtype: str, rid: str) -> list[dict[str, Any]]:
        """Every version of a resource, oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(resource_history.c.resource).where(
                resource_history.c.type == rtype, resource_history.c.id == rid).order_by(resource_history.c.version_id))
            return [orjson.loads(t) for (t,) in rows]

    def cohort(self, site: str | None = None) -> list[Any]:
        """The outcomes cohort (:class:`adapter.outcomes.cohort.PatientCourse` of every patient who
        received blinatumomab, optionally of one site) from the ``patient_course`` table. Courses made
        by older extraction code are rebuilt first (once, in a write transaction)."""
        with self.engine.connect() as conn:
            stale = stale_patients(conn)
        if stale:
            with self.transaction() as tx:
                tx.touched_patients.update(stale)
        with self.engine.connect() as conn:
            return read_cohort(conn, site)

    def iter_resources(self, rtype: str | None = None, site: str | None = None) -> Iterator[dict[str, Any]]:
        """Stream current resources, optionally of one type and/or site, in (type, id) order."""
        q = select(resources.c.resource).where(resources.c.deleted.is_(False))
        if rtype:
            q = q.where(resources.c.type == rtype)
        if site:
            q = q.where(resources.c.site == site)
        with self.engine.connect() as conn:
            for (text,) in conn.execution_options(stream_results=True, yield_per=1000).execute(
                    q.order_by(resources.c.type, resources.c.id)):
                yield orjson.loads(text)

    def current_versions(self, types: Iterable[str]) -> dict[tuple[str, str], int]:
        """``(type, id) -> versionId`` of every current (not deleted) resource of ``types``."""
        q = select(resources.c.type, resources.c.id, resources.c.version_id).where(
            resources.c.deleted.is_(False), resources.c.type.in_(sorted(set(types))))
        with self.engine.connect() as conn:
            return {(t, i): int(v) for t, i, v in conn.execute(q)}

    def read_current(self, keys: Iterable[tuple[str, str]]) -> list[dict[str, Any]]:
        """The current resources among ``keys`` (``(type, id)``; deleted and absent ones are left out)."""
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        out = []
        with self.engine.connect() as conn:
            for t, ids in sorted(by_type.items()):
                for n in range(0, len(ids), 500):
                    q = select(resources.c.resource).where(resources.c.type == t, resources.c.id.in_(ids[n:n + 500]),
                                                           resources.c.deleted.is_(False))
                    out.extend(orjson.loads(text) for (text,) in conn.execute(q))
        return out

    def compartment(self, patient_id: str, site: str | None = None) -> list[dict[str, Any]]:
        """Current resources in a Patient's compartment (``subject``/``patient`` = the Patient),
        the Patient itself excluded, in (type, id) order (only ``site``'s when given). Only the
        resources of the Patient's own site are in it: another site's resource naming the patient
        is not."""
        with self.engine.connect() as conn:
            own = conn.execute(select(resources.c.site).where(resources.c.type == "Patient",
                                                              resources.c.id == patient_id)).scalar()
            if own is None or (site is not None and own != site):
                return []
            q = (select(resources.c.resource).where(resources.c.patient_id == patient_id, resources.c.deleted.is_(False),
                                                    resources.c.type != "Patient", resources.c.site == own)
                 .order_by(resources.c.type, resources.c.id))
            return [orjson.loads(t) for (t,) in conn.execute(q)]

    def counts(self, site: str | None = None) -> dict[str, int]:
        """Number of current resources per type."""
        q = select(resources.c.type, func.count()).where(resources.c.deleted.is_(False)).group_by(resources.c.type)
        if site:
            q = q.where(resources.c.site == site)
        with self.engine.connect() as conn:
            return {t: n for t, n in conn.execute(q)}

    def version_total(self) -> int:
        """Number of rows in the history table (every version of every resource)."""
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(resource_history)).scalar() or 0)

    def sites(self) -> list[str]:
        with self.engine.connect() as conn:
            return [s for (s,) in conn.execute(select(resources.c.site).distinct().order_by(resources.c.site))]

    def ingestion_reports(self, site: str | None = None, newest: int | None = None) -> list[dict[str, Any]]:
        """Ingestion reports (JSON), oldest first; with ``newest``, only that many, newest first
        (an MLLP listener records one ingestion per message, so a store can hold very many)."""
        q = select(ingestions.c.report)
        q = q.order_by(ingestions.c.started) if newest is None else q.order_by(ingestions.c.started.desc()).limit(newest)
        if site:
            q = q.where(ingestions.c.site == site)
        with self.engine.connect() as conn:
            return [orjson.loads(t) for (t,) in conn.execute(q)]

    def ingestion_sites(self) -> list[str]:
        """The sites that have ingestions."""
        with self.engine.connect() as conn:
            return [s for (s,) in conn.execute(select(ingestions.c.site).distinct().order_by(ingestions.c.site))]

    def ingestion_report(self, ingestion_id: str, site: str | None = None) -> dict[str, Any] | None:
        """One ingestion's report, or ``None`` (also when it is another site's and ``site`` is given)."""
        q = select(ingestions.c.report).where(ingestions.c.id == ingestion_id)
        if site:
            q = q.where(ingestions.c.site == site)
        with self.engine.connect() as conn:
            text = conn.execute(q).scalar()
        return None if text is None else orjson.loads(text)


def _in_site(site: str | None) -> list[Any]:
    """The condition that confines a query on ``resources`` to one site (none when ``site`` is None)."""
    return [] if site is None else [resources.c.site == site]


def _history_in_site(site: str | None) -> list[Any]:
    """The same for ``resource_history``: its resource's current row is in ``site``."""
    if site is None:
        return []
    return [select(resources.c.site).where(resources.c.type == resource_history.c.type,
                                           resources.c.id == resource_history.c.id).scalar_subquery() == site]


def _sqlite_begin(conn: Connection) -> None:
    """Write transactions take SQLite's write lock when they begin (``BEGIN IMMEDIATE``), so a
    check-then-write (conditional create) cannot interleave with another writer; reads use a plain
    deferred ``BEGIN``. (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL"
    for pysqlite: the driver's own transaction handling is turned off in ``_sqlite_pragmas``.)"""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("adapter_write") else "BEGIN")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN itself (see _sqlite_begin)
    cur = dbapi_conn.cursor()
    # 8 KiB pages for a new database (SQLite "PRAGMA page_size": set before the first table, and
    # before WAL mode; a no-op on an existing one). A stored resource is ~2 KB of JSON, and with 4 KiB
    # pages one row of ``resources`` took a page of its own: 20,000 MRD results were 82 MB in that
    # table, now 55 MB, and an ingestion writes that much less (``make bench``).
    cur.execute("PRAGMA page_size=8192")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
