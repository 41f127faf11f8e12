"""The ``export_jobs`` table: Bulk Data $export jobs, and the queries an export streams.

Every state change is one compare-and-set UPDATE (``WHERE id = :id AND status = :expected``), so
several worker threads or processes never run one job twice, and a cancel racing a completion has
exactly one winner. Timestamps are ISO 8601 UTC instants (sortable as text).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import and_, delete, exists, false, func, or_, select, update

from adapter.store.db import Store, now_instant
from adapter.store.schema import export_jobs, resources

#: Statuses of a job that still holds a slot (counted against ``export_max_jobs``).
ACTIVE = ("accepted", "in-progress")
_PATIENT_CHUNK = 500


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="microseconds")  # as now_instant()


@dataclass(frozen=True)
class ExportJob:
    """One row of ``export_jobs``; ``params`` and ``manifest`` decoded from JSON."""

    id: str
    status: str
    request: str
    params: dict[str, Any]
    created: str
    transaction_time: str
    heartbeat: str | None
    attempts: int
    progress: str | None
    manifest: dict[str, Any] | None
    error: str | None
    finished: str | None


def _job(row: Any) -> ExportJob:
    m = row._mapping
    return ExportJob(m["id"], m["status"], m["request"], json.loads(m["params"]), m["created"], m["transaction_time"],
                     m["heartbeat"], m["attempts"], m["progress"],
                     json.loads(m["manifest"]) if m["manifest"] else None, m["error"], m["finished"])


class ExportJobs:
    """Job bookkeeping on a :class:`Store` (SQLite or PostgreSQL)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(self, job_id: str, request: str, params: dict[str, Any], max_active: int) -> bool:
        """Insert an ``accepted`` job unless ``max_active`` jobs are already accepted or running
        (then ``False``: the caller answers 429). Its transaction time is now: the export holds
        what was stored up to this instant (Bulk Data STU2, manifest ``transactionTime``)."""
        with self.store.transaction() as tx:
            tx.lock("export-jobs")  # PostgreSQL: the count and the insert are one step across processes
            active = tx.conn.execute(select(func.count()).select_from(export_jobs)
                                     .where(export_jobs.c.status.in_(ACTIVE))).scalar() or 0
            if active >= max_active:
                return False
            now = now_instant()
            tx.conn.execute(export_jobs.insert().values(
                id=job_id, status="accepted", request=request, params=json.dumps(params), created=now,
                transaction_time=now, attempts=0))
        return True

    def get(self, job_id: str) -> ExportJob | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(export_jobs).where(export_jobs.c.id == job_id)).first()
        return _job(row) if row else None

    def _cas(self, job_id: str, expected: tuple[str, ...], **values: Any) -> bool:
        with self.store.engine.begin() as conn:
            n = conn.execute(update(export_jobs).where(export_jobs.c.id == job_id, export_jobs.c.status.in_(expected))
                             .values(**values)).rowcount
        return n == 1

    def claim(self, stale_seconds: float) -> ExportJob | None:
        """Take the oldest job that is ``accepted``, or ``in-progress`` with a heartbeat older than
        ``stale_seconds`` (its worker was killed), for this worker; ``None`` when there is none."""
        stale = _ago(stale_seconds)
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(export_jobs.c.id, export_jobs.c.status, export_jobs.c.heartbeat)
                                .where(or_(export_jobs.c.status == "accepted",
                                           and_(export_jobs.c.status == "in-progress", export_jobs.c.heartbeat < stale)))
                                .order_by(export_jobs.c.created)).all()
        for jid, status, beat in rows:
            with self.store.engine.begin() as conn:
                q = update(export_jobs).where(export_jobs.c.id == jid, export_jobs.c.status == status)
                q = q.where(export_jobs.c.heartbeat == beat) if beat is not None else q.where(export_jobs.c.heartbeat.is_(None))
                if conn.execute(q.values(status="in-progress", heartbeat=now_instant(),
                                         attempts=export_jobs.c.attempts + 1, progress="starting")).rowcount == 1:
                    return self.get(jid)
        return None

    def beat(self, job_id: str, progress: str) -> bool:
        """Renew the heartbeat and progress text; ``False`` when the job is no longer in progress
        (cancelled or deleted: the worker stops)."""
        return self._cas(job_id, ("in-progress",), heartbeat=now_instant(), progress=progress[:200])

    def complete(self, job_id: str, manifest: dict[str, Any]) -> bool:
        return self._cas(job_id, ("in-progress",), status="completed", manifest=json.dumps(manifest),
                         progress="completed", finished=now_instant())

    def fail(self, job_id: str, error: str) -> bool:
        return self._cas(job_id, ("accepted", "in-progress"), status="failed", error=error[:2000], finished=now_instant())

    def cancel(self, job_id: str) -> bool:
        """Mark an accepted, running or finished job cancelled (its files are removed by the caller
        or the worker); ``False`` when it is unknown or already cancelled/expired."""
        return self._cas(job_id, ("accepted", "in-progress", "completed", "failed"), status="cancelled",
                         finished=now_instant())

    def expired(self, older_than_seconds: float) -> list[str]:
        """Finished jobs (completed, failed, cancelled) older than the expiry: marked ``expired``
        and returned, so the caller deletes their files."""
        limit = _ago(older_than_seconds)
        with self.store.engine.begin() as conn:
            ids = [j for (j,) in conn.execute(select(export_jobs.c.id).where(
                export_jobs.c.status.in_(("completed", "failed", "cancelled")), export_jobs.c.finished < limit))]
            if ids:
                conn.execute(update(export_jobs).where(export_jobs.c.id.in_(ids)).values(status="expired"))
        return ids

    def forget(self, job_id: str) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(delete(export_jobs).where(export_jobs.c.id == job_id))


def resource_types(store: Store, patient_level: bool) -> list[str]:
    """Types present in the store (current, not deleted); with ``patient_level`` only those in
    some Patient compartment. ``Patient`` first, then alphabetical."""
    q = select(resources.c.type).where(resources.c.deleted == false()).distinct()
    if patient_level:
        q = q.where(resources.c.patient_id.is_not(None))
    with store.engine.connect() as conn:
        types = {t for (t,) in conn.execute(q)}
    return sorted(types, key=lambda t: (t != "Patient", t))


def _conditions(rtype: str, until: str, since: str | None, patient_level: bool, where: list[Any] | None,
                site: str | None = None) -> list[Any]:
    base = [resources.c.type == rtype, resources.c.deleted == false(), resources.c.last_updated <= until]
    if site is not None:
        base.append(resources.c.site == site)
    if since:
        base.append(resources.c.last_updated > since)
    if patient_level:
        base.append(resources.c.patient_id.is_not(None))
        if rtype != "Patient":
            base.append(own_patients_site())
    if where:
        base.append(or_(*where))
    return base


def own_patients_site() -> Any:
    """The condition that a resource is in the same site as the Patient it names: a Patient's
    compartment holds only its own site's resources (a resource of another site that names the
    patient is not part of it). A primary-key probe per row."""
    patient = resources.alias("compartment_patient")
    return exists(select(patient.c.id).where(patient.c.type == "Patient", patient.c.id == resources.c.patient_id,
                                             patient.c.site == resources.c.site))


def _chunks(patients: list[str] | None) -> list[list[str] | None]:
    if patients is None:
        return [None]
    return [patients[i:i + _PATIENT_CHUNK] for i in range(0, len(patients), _PATIENT_CHUNK)]


def count(store: Store, rtype: str, *, until: str, since: str | None = None, patients: list[str] | None = None,
          patient_level: bool = False, where: list[Any] | None = None, site: str | None = None) -> int:
    """How many resources :func:`stream` yields for the same arguments."""
    total = 0
    with store.engine.connect() as conn:
        for chunk in _chunks(patients):
            conds = _conditions(rtype, until, since, patient_level, where, site)
            if chunk is not None:
                conds.append(resources.c.patient_id.in_(chunk))
                if rtype != "Patient" and not patient_level:
                    conds.append(own_patients_site())
            total += int(conn.execute(select(func.count()).select_from(resources).where(*conds)).scalar() or 0)
    return total


def stream(store: Store, rtype: str, *, until: str, since: str | None = None, patients: list[str] | None = None,
           patient_level: bool = False, where: list[Any] | None = None, batch: int = 500,
           site: str | None = None) -> Iterator[dict[str, Any]]:
    """Current resources of one type as of ``until`` (last updated at or before it, not deleted),
    changed after ``since`` when given, in id order, decoded one by one from a server-side cursor
    (PostgreSQL) or SQLite's lazy cursor: memory stays bounded whatever the export's size.

    ``patients``: only these Patients' compartments (Group export), queried in chunks of 500 ids.
    ``patient_level``: only resources in some Patient's compartment. ``where``: extra SQL
    conditions from ``_typeFilter`` searches, OR-ed (Bulk Data STU2 §_typeFilter). ``site``: only
    that site's resources (a site-bound client's export)."""
    with store.engine.connect() as conn:
        for chunk in _chunks(patients):
            conds = _conditions(rtype, until, since, patient_level, where, site)
            if chunk is not None:
                conds.append(resources.c.patient_id.in_(chunk))
                if rtype != "Patient" and not patient_level:
                    conds.append(own_patients_site())
            q = select(resources.c.resource).where(*conds).order_by(resources.c.id)
            for (text,) in conn.execution_options(stream_results=True, yield_per=batch).execute(q):
                yield orjson.loads(text)
