"""Running Bulk Data $export jobs: NDJSON files per type, written in the background.

A job's files go to ``<export_dir>/<job id>/``. Each file is written as ``*.ndjson.part`` and
renamed when whole; the manifest is stored in the same UPDATE that marks the job completed. So a
job cut off at any point (server killed) leaves no manifest and no file it lists that is partial:
the next worker finds its heartbeat stale, deletes the folder and runs it again from the start, up
to :data:`MAX_ATTEMPTS` times, then marks it failed.

Memory is bounded: resources are decoded one at a time from a database cursor and written at once
(adapter/store/exports.py ``stream``); no list of resources is ever built.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import orjson

from adapter.bulk.request import ExportRequest
from adapter.config import CANONICAL, Settings
from adapter.privacy import ALLOWED, PSEUDONYM_SYSTEM, deidentify
from adapter.search.query import parse
from adapter.store import Store
from adapter.store.exports import ExportJob, ExportJobs, count, resource_types, stream
from adapter.store.search import query_condition

log = logging.getLogger("adapter.bulk")

MAX_ATTEMPTS = 3
#: Key of our entries in the manifest's ``extension`` object (Bulk Data STU2 allows extensions there).
EXTENSION = f"{CANONICAL}/bulk"
#: Types left out of de-identified exports: a Provenance names the hospital's source file and rows.
NOT_DEIDENTIFIED = ("Provenance",)


class Cancelled(Exception):
    """The job was cancelled (DELETE) or deleted while it ran."""


def group_members(store: Store, group_id: str) -> list[str]:
    """Patient ids of a Group's active members (``member.entity`` references to Patients;
    ``inactive: true`` members are left out). Raises LookupError when there is no such Group."""
    group = store.read("Group", group_id)
    if group is None:
        raise LookupError(f"Group/{group_id} is unknown or deleted")
    out = []
    for m in group.get("member") or []:
        ref = (m.get("entity") or {}).get("reference", "")
        if ref.startswith("Patient/") and not m.get("inactive"):
            out.append(ref.split("/", 1)[1])
    return sorted(set(out))


class _Writer:
    """NDJSON files of one type, split into parts past ``max_bytes``."""

    def __init__(self, folder: Path, rtype: str, max_bytes: int, url_for: Callable[[str], str]) -> None:
        self.folder, self.rtype, self.max_bytes, self.url_for = folder, rtype, max_bytes, url_for
        self.part, self.count, self.size = 0, 0, 0
        self.fh: Any = None
        self.outputs: list[dict[str, Any]] = []

    def _name(self) -> str:
        return f"{self.rtype}.{self.part}.ndjson"

    def write(self, line: bytes) -> None:
        if self.fh is not None and self.count and self.size + len(line) > self.max_bytes:
            self.close()
        if self.fh is None:
            self.part += 1
            self.count, self.size = 0, 0
            self.fh = (self.folder / (self._name() + ".part")).open("wb")
        self.fh.write(line)
        self.count += 1
        self.size += len(line)

    def close(self) -> None:
        if self.fh is None:
            return
        self.fh.close()
        self.fh = None
        (self.folder / (self._name() + ".part")).replace(self.folder / self._name())
        self.outputs.append({"type": self.rtype, "url": self.url_for(self._name()), "count": self.count})


def run_job(store: Store, settings: Settings, jobs: ExportJobs, job: ExportJob) -> None:
    """Run one claimed ``$export`` job to completion, failure or cancellation (see the module docstring)."""
    run_lifecycle(settings, jobs, job, "export", lambda folder: _export(store, settings, jobs, job, folder))


def run_lifecycle(settings: Settings, jobs: ExportJobs, job: ExportJob, what: str,
                  write: Callable[[Path], dict[str, Any]]) -> None:
    """The life of one claimed job, shared by ``$export`` and ``$viewdefinition-export``: give up
    after :data:`MAX_ATTEMPTS` cut-offs, start from an empty ``<export_dir>/<job id>/``, call
    ``write(folder)`` for the manifest and store it with the completion (unless the job was
    cancelled meanwhile). :class:`Cancelled` (from ``write`` or a lost completion) deletes the
    files; any other exception marks the job failed with its reason. Never raises."""
    folder = settings.export_dir / job.id
    try:
        if job.attempts > MAX_ATTEMPTS:
            raise RuntimeError(f"the export was cut off {MAX_ATTEMPTS} times")
        shutil.rmtree(folder, ignore_errors=True)  # a rerun starts clean
        folder.mkdir(parents=True)
        manifest = write(folder)
        if not jobs.complete(job.id, manifest):
            raise Cancelled
        log.info("%s %s completed: %d file(s)", what, job.id, len(manifest["output"]))
    except Cancelled:
        shutil.rmtree(folder, ignore_errors=True)
        log.info("%s %s cancelled", what, job.id)
    except Exception as exc:  # noqa: BLE001  (any failure ends the job with its reason, never a crash)
        shutil.rmtree(folder, ignore_errors=True)
        jobs.fail(job.id, f"{exc.__class__.__name__}: {exc}")
        log.warning("%s %s failed: %s", what, job.id, exc.__class__.__name__)


def _export(store: Store, settings: Settings, jobs: ExportJobs, job: ExportJob, folder: Path) -> dict[str, Any]:
    base = job.params["base"]
    beat_every = max(0.2, settings.export_stale_seconds / 6)
    last = [time.monotonic()]

    def beat(progress: str, force: bool) -> bool:
        if not force and time.monotonic() - last[0] < beat_every:
            return True
        last[0] = time.monotonic()
        return jobs.beat(job.id, progress)

    return write_export(store, settings, ExportRequest.from_json(job.params["request"]), folder,
                        transaction_time=job.transaction_time, request_url=job.request,
                        url_for=lambda name: f"{base}/$export-file/{job.id}/{name}", beat=beat)


def count_export(store: Store, req: ExportRequest, transaction_time: str) -> int:
    """How many resources :func:`write_export` will write (for a progress bar)."""
    patients = group_members(store, req.group_id) if req.level == "group" else None
    return sum(count(store, rtype, until=transaction_time, since=req.since, patients=patients,
                     patient_level=req.level != "system", where=_where(req, rtype), site=req.site)
               for rtype in _types(store, req))


def _types(store: Store, req: ExportRequest) -> list[str]:
    types = req.types or resource_types(store, patient_level=req.level != "system")
    return [t for t in types if t not in NOT_DEIDENTIFIED] if req.deidentify else types


def _where(req: ExportRequest, rtype: str) -> list[Any] | None:
    return [query_condition(parse(rtype, parse_qsl(q, keep_blank_values=True))) for q in req.type_filters.get(rtype, [])] or None


def write_export(store: Store, settings: Settings, req: ExportRequest, folder: Path, *, transaction_time: str,
                 request_url: str, url_for: Callable[[str], str], beat: Callable[[str, bool], bool]) -> dict[str, Any]:
    """Write the NDJSON files of ``req`` into ``folder`` and return the manifest (Bulk Data STU2
    §Response - Complete Status). ``url_for(file name)`` gives each file's URL in the manifest;
    ``beat(progress text, force)`` is called after every resource (``force`` after each type) and
    stops the export with :class:`Cancelled` when it returns ``False``.

    Raises LookupError (a Group export of an unknown Group), Cancelled, or the store's errors."""
    patients = group_members(store, req.group_id) if req.level == "group" else None
    types = _types(store, req)
    outputs: list[dict[str, Any]] = []
    written, started = 0, time.monotonic()
    for i, rtype in enumerate(types, start=1):
        writer = _Writer(folder, rtype, settings.export_max_file_bytes, url_for)
        try:
            for res in stream(store, rtype, until=transaction_time, since=req.since, patients=patients,
                              patient_level=req.level != "system", where=_where(req, rtype), site=req.site):
                if req.deidentify:
                    res = deidentify(res, settings.pseudonym_key, settings.deidentify_birth_date,
                                     settings.deidentify_date_shift_days)
                writer.write(orjson.dumps(res) + b"\n")
                written += 1
                if settings.export_max_rows_per_second:
                    ahead = written / settings.export_max_rows_per_second - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
                if not beat(f"{rtype}: type {i} of {len(types)}, {written} resources written", False):
                    raise Cancelled
        except BaseException:
            if writer.fh is not None:
                writer.fh.close()
            raise
        writer.close()
        outputs += writer.outputs
        if not beat(f"type {i} of {len(types)} done, {written} resources written", True):
            raise Cancelled
    manifest: dict[str, Any] = {
        "transactionTime": transaction_time,
        "request": request_url,
        "requiresAccessToken": settings.auth_enabled,
        "output": outputs,
        "error": [],
    }
    ext: dict[str, Any] = {}
    if req.deidentify:
        ext["deidentification"] = {
            "pseudonym": "Patient.identifier is the study pseudonym, HMAC-SHA256(network secret, site|record number)",
            "pseudonymSystem": PSEUDONYM_SYSTEM,
            "birthDate": f"truncated to {settings.deidentify_birth_date}",
            "allowedElements": {t: sorted(e) for t, e in sorted(ALLOWED.items())},
            "removed": ["every element not allowed, including text (narrative) and note (free text)",
                        "site-scoped identifiers (record and accession numbers)"],
            "excludedTypes": list(NOT_DEIDENTIFIED),
            "otherDates": (f"shifted by a per-patient offset of 1 to {settings.deidentify_date_shift_days} days, "
                           "earlier or later, the same for all of a patient's resources (intervals kept)"
                           if settings.deidentify_date_shift_days else
                           "kept (the outcome analyses need the intervals between them)"),
        }
    if req.ignored:
        ext["ignoredParameters"] = req.ignored
    if ext:
        manifest["extension"] = {EXTENSION: ext}
    return manifest


class ExportWorker:
    """A background thread that runs accepted (and cut-off) jobs one at a time and deletes
    expired ones. Several workers (threads or processes) may share one database: jobs are claimed
    by compare-and-set (adapter/store/exports.py)."""

    def __init__(self, store: Store, settings: Settings, poll_seconds: float = 0.3) -> None:
        self.store, self.settings, self.poll = store, settings, poll_seconds
        self.jobs = ExportJobs(store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Expire old jobs, then run one job if there is one. Returns whether a job ran."""
        for jid in self.jobs.expired(self.settings.export_expiry_seconds):
            shutil.rmtree(self.settings.export_dir / jid, ignore_errors=True)
        job = self.jobs.claim(self.settings.export_stale_seconds)
        if job is None:
            return False
        from adapter.bulk.views_export import KIND, run_view_job

        if job.params.get("kind") == KIND:  # SQL on FHIR $viewdefinition-export (same table and worker)
            run_view_job(self.store, self.settings, self.jobs, job)
        else:
            run_job(self.store, self.settings, self.jobs, job)
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.run_once():
                    self._stop.wait(self.poll)
            except Exception:  # noqa: BLE001  (a database hiccup must not kill the worker)
                log.exception("export worker iteration failed")
                self._stop.wait(self.poll * 10)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="bulk-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
