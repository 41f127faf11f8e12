"""FHIR Bulk Data Access STU2 export endpoints (https://hl7.org/fhir/uv/bulkdata/STU2/export.html):

- kick-off: ``GET|POST /$export``, ``/Patient/$export``, ``/Group/{id}/$export`` with
  ``Prefer: respond-async``; 202 and ``Content-Location`` of the status URL; 429 when
  ``export_max_jobs`` exports are already queued or running;
- status: ``GET /$export-poll-status/{job}``: 202 with ``X-Progress`` and ``Retry-After`` while it
  runs, 200 with the manifest (``application/json``) and ``Expires`` when done, 500 with an
  OperationOutcome when it failed, 404 once cancelled, deleted or expired;
- cancel: ``DELETE /$export-poll-status/{job}``: 202, and the files are removed;
- files: ``GET /$export-file/{job}/{Type}.{n}.ndjson`` (``application/fhir+ndjson``).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import uuid
from datetime import datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from adapter.api.fhir_http import FHIRError, http_date, operation_outcome, parse_json_body
from adapter.api.security import principal, require
from adapter.bulk.request import ExportRequestError, parameters_items, parse_kickoff
from adapter.config import Settings
from adapter.store import Store
from adapter.store.exports import ExportJobs

_FILE = re.compile(r"^[A-Z][A-Za-z]{1,63}\.\d{1,6}\.ndjson$")
_ACCEPT = ("application/fhir+json", "application/json", "*/*")


def _check_headers(request: Request) -> bool:
    """Bulk Data STU2 kick-off headers: ``Prefer: respond-async`` is required; ``Accept`` must
    allow ``application/fhir+json``. Returns whether lenient handling was asked for."""
    prefer = request.headers.get("prefer", "")
    tokens = {t.strip().lower() for t in prefer.split(",")}
    if "respond-async" not in tokens:
        raise FHIRError(400, "invalid", "$export is asynchronous: send the header Prefer: respond-async")
    accept = request.headers.get("accept")
    if accept and not any(a in accept for a in _ACCEPT):
        raise FHIRError(406, "not-supported", f"Accept '{accept[:60]}': $export answers application/fhir+json")
    return "handling=lenient" in tokens


def add_bulk_routes(app: FastAPI, store: Store, settings: Settings, base_of: Any) -> None:
    """Register the routes (before the generic ``/{type}`` ones). ``base_of(request)`` gives the
    public base URL."""
    jobs = ExportJobs(store)

    async def kickoff(request: Request, level: str, group_id: str | None = None) -> Response:
        who = require(request, "export", "*", level)
        lenient = _check_headers(request)
        if request.method == "POST":
            body = parse_json_body(await request.body())
            try:
                items = parameters_items(body if isinstance(body, dict) else {})
            except ExportRequestError as exc:
                raise FHIRError(400, "invalid", str(exc)) from None
        else:
            items = list(request.query_params.multi_items())
        try:
            req = parse_kickoff(level, items, group_id=group_id, lenient=lenient,
                                force_deidentify=settings.export_deidentify or who.role == "coordinator")
        except ExportRequestError as exc:
            raise FHIRError(400, "not-supported" if "not supported" in str(exc) else "invalid", str(exc)) from None
        if req.deidentify:  # no _typeFilter on what the de-identified output removes or coarsens
            from urllib.parse import parse_qsl

            from adapter.privacy import DeidentifiedFilterError, check_deidentified_query
            from adapter.search.query import parse

            try:
                for rtype, queries in req.type_filters.items():
                    for q in queries:
                        check_deidentified_query(parse(rtype, parse_qsl(q, keep_blank_values=True)),
                                                 settings.deidentify_birth_date, settings.deidentify_date_shift_days)
            except DeidentifiedFilterError as exc:
                raise FHIRError(400, "invalid", f"_typeFilter: {exc}") from None
        if req.deidentify and not settings.pseudonym_key:
            raise FHIRError(503, "security", "de-identified exports need the network's pseudonym secret "
                            "(ADAPTER_PSEUDONYM_KEY), which this server does not have")
        req = dataclasses.replace(req, site=who.site_scope)
        if group_id is not None and store.read("Group", group_id, who.site_scope) is None:
            raise FHIRError(404, "not-found", f"Group/{group_id} is not known")
        base = base_of(request)
        job_id = str(uuid.uuid4())
        if not jobs.create(job_id, str(request.url), {"request": req.to_json(), "base": base, "owner": who.client_id}, settings.export_max_jobs):
            raise FHIRError(429, "throttled", f"{settings.export_max_jobs} export(s) are already running; retry later",
                            headers={"Retry-After": "30"})
        return JSONResponse(operation_outcome("informational", f"export {job_id} accepted", severity="information"),
                            status_code=202, media_type="application/fhir+json",
                            headers={"Content-Location": f"{base}/$export-poll-status/{job_id}"})

    # GET with query parameters, or POST with a Parameters body (Bulk Data STU2 §Bulk Data Kick-off Request)
    def kickoff_route(path: str, name: str, summary: str):
        """Register GET and POST of one kick-off path, each with its own OpenAPI operationId."""
        def register(func):
            for method in ("get", "post"):
                getattr(app, method)(path, summary=summary, status_code=202,
                                     operation_id=f"{name}_{method}")(func)
            return func
        return register

    @kickoff_route("/$export", "export_system", "Bulk Data system-level export (kick-off)")
    async def export_system(request: Request) -> Response:
        return await kickoff(request, "system")

    @kickoff_route("/Patient/$export", "export_patients", "Bulk Data patient-level export (kick-off)")
    async def export_patients(request: Request) -> Response:
        return await kickoff(request, "patient")

    @kickoff_route("/Group/{gid}/$export", "export_group", "Bulk Data export of a Group's members (kick-off)")
    async def export_group(gid: str, request: Request) -> Response:
        return await kickoff(request, "group", gid)

    def _job_or_404(request: Request, jid: str) -> Any:
        """The job, when it exists and was kicked off by the same client (else 404)."""
        job = jobs.get(jid)
        if (job is None or job.status in ("cancelled", "expired") or job.params.get("owner") != principal(request).client_id
                or job.params.get("kind") is not None):  # a $viewdefinition-export job has its own URLs
            raise FHIRError(404, "not-found", f"no export {jid[:40]} (unknown, cancelled or expired)")
        return job

    @app.get("/$export-poll-status/{jid}", summary="Bulk Data export status (manifest when complete)")
    def export_status(jid: str, request: Request) -> Response:
        job = _job_or_404(request, jid)
        if job.status in ("accepted", "in-progress"):
            return Response(status_code=202, headers={"X-Progress": job.progress or "queued", "Retry-After": "1"})
        if job.status == "failed":
            raise FHIRError(500, "exception", f"the export failed: {job.error}")
        expires = datetime.fromisoformat(job.finished) + timedelta(seconds=settings.export_expiry_seconds)
        return JSONResponse(job.manifest, headers={"Expires": http_date(expires.isoformat())})

    @app.delete("/$export-poll-status/{jid}", summary="Cancel a Bulk Data export, or delete its files")
    def export_cancel(jid: str, request: Request) -> Response:
        _job_or_404(request, jid)
        if not jobs.cancel(jid):
            raise FHIRError(404, "not-found", f"no export {jid[:40]} to cancel")
        shutil.rmtree(settings.export_dir / jid, ignore_errors=True)
        return JSONResponse(operation_outcome("informational", f"export {jid} cancelled and its files deleted",
                                              severity="information"), status_code=202, media_type="application/fhir+json")

    @app.get("/$export-file/{jid}/{name}", summary="A Bulk Data export file (NDJSON)")
    def export_file(jid: str, name: str, request: Request) -> Response:
        job = _job_or_404(request, jid)
        listed = {o["url"].rsplit("/", 1)[1] for o in (job.manifest or {}).get("output", [])}
        if job.status != "completed" or not _FILE.match(name) or name not in listed:
            raise FHIRError(404, "not-found", f"export {jid[:40]} has no file {name[:80]}")
        path = settings.export_dir / jid / name
        if not path.is_file():
            raise FHIRError(404, "not-found", f"the file {name} has expired")
        return FileResponse(path, media_type="application/fhir+ndjson")
