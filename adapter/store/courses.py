"""The ``patient_course`` table: each Patient's analysis course (adapter/outcomes/cohort.py), kept
up to date inside the transactions that write the patient's resources.

Outcome reports then read one small row per patient rather than every stored resource (about 100
per patient); over 10,000 patients that is the difference between reading ~1M JSON documents and
10,000. Rows made by an older version of the extraction code are rebuilt on first read
(:func:`read_cohort`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from adapter.outcomes import cohort
from adapter.outcomes.cohort import PatientCourse, course_of
from adapter.outcomes.derive import derived_response, is_derived
from adapter.store.schema import patient_course, resources

#: The extraction code's version (adapter/outcomes/cohort.py) and this module's selection rule
#: (v2: only the patient's own site's resources): stored courses made otherwise are rebuilt.
COURSE_VERSION = hashlib.sha256(f"{cohort.COURSE_VERSION}|site-confined-v2".encode()).hexdigest()[:16]
_CHUNK = 500
_LOCK_NAMESPACE = 0x5EDA11  # first key of PostgreSQL's two-key advisory locks, for course refreshes
_LOCK_BUCKETS = 1024  # patients share locks by bucket: bounded lock-table use for any batch size


def _lock(conn: Connection, ids: list[str]) -> None:
    """PostgreSQL: serialise refreshes of the same patients until this transaction ends, so that two
    concurrent writers to one compartment cannot each store a course that misses the other's
    resources (READ COMMITTED: after the lock, the compartment read sees every committed write).
    Locks are taken in bucket order, so refreshers never deadlock each other. SQLite write
    transactions already run one at a time."""
    if conn.dialect.name != "postgresql" or not ids:
        return
    buckets = sorted({zlib.crc32(p.encode()) % _LOCK_BUCKETS for p in ids})
    conn.execute(text("SELECT pg_advisory_xact_lock(:ns, b) FROM (SELECT unnest(CAST(:buckets AS int[])) AS b ORDER BY 1) s"),
                 {"ns": _LOCK_NAMESPACE, "buckets": buckets})


def _upsert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    ins = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(patient_course)
    conn.execute(ins.on_conflict_do_update(index_elements=[patient_course.c.patient_id], set_={
        "site": ins.excluded.site, "course_version": ins.excluded.course_version, "course": ins.excluded.course}), rows)

_COMPARTMENTS = (select(resources.c.patient_id, resources.c.type, resources.c.site, resources.c.resource)
                 .where(resources.c.patient_id.in_(bindparam("ids", expanding=True)), resources.c.deleted.is_(False)))


_PATIENTS = (select(resources.c.id).where(resources.c.type == "Patient", resources.c.id.in_(bindparam("ids", expanding=True)),
                                          resources.c.deleted.is_(False)))


def refresh_courses(conn: Connection, patient_ids: Iterable[str], tx: Any = None) -> int:
    """Recompute and store the course of each Patient in ``patient_ids`` from its current
    resources (a deleted or absent Patient loses its row). Runs in the caller's transaction.
    With ``tx`` (the :class:`adapter.store.db.Transaction` of that connection), first brings each
    Patient's derived response Observation up to date (adapter/outcomes/derive.py): written when the
    MRD results imply a response and none is recorded, deleted when they no longer do, so the course
    (and every figure) reads the response from FHIR. Returns the number of courses written."""
    ids = sorted(set(patient_ids))
    _lock(conn, ids)
    written = 0
    for i in range(0, len(ids), _CHUNK):
        chunk = ids[i:i + _CHUNK]
        patients: dict[str, tuple[dict[str, Any], str]] = {}
        res: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        others: list[tuple[str, str, str, dict[str, Any]]] = []
        # only a stored Patient has a course: the compartments of the others (results a lab export
        # brings before the site's demographics) are not read
        present = [p for (p,) in conn.execute(_PATIENTS, {"ids": chunk})]
        for pid, rtype, site, body in conn.execute(_COMPARTMENTS, {"ids": present}) if present else ():
            r = orjson.loads(body)
            if rtype == "Patient":
                patients[pid] = (r, site)
            else:
                others.append((pid, rtype, site, r))
        for pid, rtype, site, r in others:
            # a course is built only from the patient's own site's resources: a resource of another
            # site that names this patient (a write that aimed across sites) never changes its figures
            if pid in patients and site == patients[pid][1]:
                res[pid][rtype].append(r)
        gone = [p for p in chunk if p not in patients]
        if gone:
            conn.execute(patient_course.delete().where(patient_course.c.patient_id.in_(gone)))
        if tx is not None:
            writes = [w for pid, (pat, site) in patients.items()
                      if (w := _settle_derived_response(tx, pat, res[pid], site)) is not None]
            if writes:  # one write for the chunk: a file that touches thousands of patients
                tx.upsert(writes)
        rows = []
        for pid, (pat, site) in patients.items():
            course = course_of(pat, res.get(pid, {}), site)  # the site whose compartment holds the Patient
            rows.append({"patient_id": pid, "site": course.site, "course_version": COURSE_VERSION,
                         "course": course.to_json_bytes().decode()})
        if rows:
            _upsert(conn, rows)
            written += len(rows)
    return written


def _settle_derived_response(tx: Any, patient: dict[str, Any], res: dict[str, list[dict[str, Any]]],
                             site: str) -> tuple[dict[str, Any], str, None] | None:
    """Bring the Patient's derived response Observation in line with what
    :func:`adapter.outcomes.derive.derived_response` gives: deleted in ``tx`` when the results no
    longer imply one; returned as an upsert entry ``(resource, site, None)`` for the caller to write
    (with the other patients' of its chunk) when it is new or changed; ``None`` when there is
    nothing to write. ``res`` is left as it will be stored."""
    from adapter.store.db import content_hash

    observations = res.get("Observation", [])
    current = next((o for o in observations if is_derived(o, patient["id"])), None)
    want = derived_response(patient, res, site)
    if want is None:
        if current is not None:
            tx.delete("Observation", current["id"])
            res["Observation"] = [o for o in observations if o is not current]
        return None
    if current is not None and content_hash(current) == content_hash(want):
        return None
    res["Observation"] = [o for o in observations if o is not current] + [want]
    return (want, site, None)


def stale_patients(conn: Connection) -> list[str]:
    """Patients whose stored course was made by other extraction code, or who have none."""
    stale = conn.execute(select(patient_course.c.patient_id).where(patient_course.c.course_version != COURSE_VERSION))
    missing = conn.execute(select(resources.c.id).where(
        resources.c.type == "Patient", resources.c.deleted.is_(False),
        resources.c.id.not_in(select(patient_course.c.patient_id))))
    return [p for (p,) in stale] + [p for (p,) in missing]


def read_cohort(conn: Connection, site: str | None = None) -> list[PatientCourse]:
    """The stored courses of patients who received blinatumomab, in (site, patient) order."""
    q = select(patient_course.c.course)
    if site is not None:
        q = q.where(patient_course.c.site == site)
    out = [PatientCourse.from_json(orjson.loads(body)) for (body,) in conn.execute(q)]
    return sorted((c for c in out if c.start is not None), key=lambda c: (c.site, c.patient))
