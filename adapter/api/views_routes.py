"""SQL on FHIR v2 ``$viewdefinition-run`` (https://sql-on-fhir.org/ig/OperationDefinition-ViewDefinitionRun.html):
a ViewDefinition applied to the server's data (or to resources sent with the request), answered
synchronously as JSON, NDJSON, CSV or Parquet (adapter/views/output.py).

- ``GET|POST /$viewdefinition-run`` (R4 mode: system level) and ``/ViewDefinition/$viewdefinition-run``
  (type level): the view is ``viewResource`` (inline, POST only) or ``viewReference``
  (``ViewDefinition/<name>`` or the canonical URL of one of the project's views in ``views/``);
- ``GET|POST /ViewDefinition/{name}/$viewdefinition-run`` (instance level) runs a project view;
- ``GET /ViewDefinition`` lists the project's views (a searchset Bundle), ``GET /ViewDefinition/{name}``
  reads one;
- ``POST /$viewdefinition-export`` and ``/ViewDefinition/$viewdefinition-export`` (``Prefer:
  respond-async``; a Parameters resource with one or more ``view`` parts, ``_format``, ``header``,
  ``patient``, ``group``, ``_since``, ``clientTrackingId``): the asynchronous pattern of the
  operation's notes (OperationDefinition-ViewDefinitionExport-notes.md): 202 with ``Content-Location``
  ``/$viewdefinition-export/{id}/status``, which answers 202 (``X-Progress``, ``Retry-After``)
  while it runs and then 303 to ``.../result``: a Parameters resource listing each view's file
  (``output.name``, ``output.location``), or 500 with an OperationOutcome when it failed;
  ``DELETE .../status`` cancels; files at ``.../{name}.{ext}``. Jobs run in the Bulk Data export
  worker (adapter/bulk/views_export.py); all views are validated before the job starts, every
  problem reported with its ``parameter[i]``.

Parameters: ``_format`` (``json``, ``ndjson``, ``csv``, ``parquet``; or the ``Accept`` header),
``header`` (CSV header line, default true), ``patient``, ``group`` (repeatable), ``_since``,
``_limit``, ``resource`` (POST: transform these resources instead of the server's). ``source`` is
refused with 400 (not supported).

Authorization is that of ``$export`` (adapter/auth/policy.py), on the view's resource type: a site
client sees its site's resources only; a coordinator must name a ``group`` and gets the view over
de-identified resources (adapter/privacy.py), where a ``patient`` filter is refused.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from adapter.api.fhir_http import FHIRError, http_date, operation_outcome, parse_json_body
from adapter.api.security import principal, require
from adapter.config import ROOT, Settings
from adapter.store import Store
from adapter.views.output import MEDIA_TYPES as FORMATS
from adapter.views.output import render

_ACCEPT = {"application/json": "json", "application/x-ndjson": "ndjson", "application/ndjson": "ndjson",
           "text/csv": "csv", "application/vnd.apache.parquet": "parquet", "application/octet-stream": "parquet"}
_MAX_LIMIT = 1_000_000


def _views() -> dict[str, dict[str, Any]]:
    """The project's ViewDefinitions (``views/*.json``) by name."""
    out = {}
    for path in sorted((ROOT / "views").glob("*.json")):
        view = orjson.loads(path.read_bytes())
        out[view["name"]] = view
    return out


def _params(query: Iterable[tuple[str, str]], body: Any) -> dict[str, list[Any]]:
    """Operation parameters by name: the query string's items, plus a POSTed Parameters resource
    (values as their ``value[x]``, ``resource`` or ``valueReference.reference``)."""
    out: dict[str, list[Any]] = {}
    for k, v in query:
        out.setdefault(k, []).append(v)
    if body is None:
        return out
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError(400, "invalid", "POST $viewdefinition-run takes a Parameters resource")
    for p in body.get("parameter") or []:
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise FHIRError(400, "invalid", "each parameter needs a name")
        if "resource" in p:
            value = p["resource"]
        elif "valueReference" in p:
            value = (p["valueReference"] or {}).get("reference")
        else:
            keys = [k for k in p if k.startswith("value")]
            if len(keys) != 1:
                raise FHIRError(400, "invalid", f"parameter {p['name']!r} needs one value[x] or a resource")
            value = p[keys[0]]
        out.setdefault(p["name"], []).append(value)
    return out


def _one(params: dict[str, list[Any]], name: str) -> Any:
    values = params.get(name) or []
    if len(values) > 1:
        raise FHIRError(400, "invalid", f"{name} may be given once")
    return values[0] if values else None


def add_view_routes(app: FastAPI, store: Store, settings: Settings, base_of: Any) -> None:
    """Register the routes (before the generic ``/{type}`` ones). ``base_of(request)`` gives the
    public base URL (for the status, result and file URLs of ``$viewdefinition-export``)."""
    from adapter.views.runner import CompiledView, ViewDefinitionError

    def lookup(ref: Any) -> dict[str, Any]:
        views = _views()
        text = str(ref or "")
        name = text.split("/")[-1] if text.startswith(("ViewDefinition/", "http")) else text
        view = views.get(name)
        if view is None or (text.startswith("http") and view.get("url") != text):
            raise FHIRError(404, "not-found", f"no ViewDefinition {text[:120]!r}; known: {', '.join(sorted(views))}")
        return view

    def export_scope(request: Request, rtype: str, params: dict[str, list[Any]]) -> dict[str, Any]:
        """What the caller may read of ``rtype`` under the $export rules, resolved now: ``site``
        (a site-bound client's site, else None), ``deidentified``, ``patients`` (a group's members
        or the patient filter; None for all) and ``since``. Raises FHIRError 400/403/404/503."""
        from adapter.bulk.runner import group_members

        groups = [str(g).split("/")[-1] for g in params.get("group") or []]
        who = require(request, "export", rtype, "group" if groups else "system")
        deidentified = settings.export_deidentify or who.role == "coordinator"
        patient = _one(params, "patient")
        if deidentified and patient is not None:
            raise FHIRError(400, "invalid", "patient: de-identified output cannot be filtered by a patient "
                            "(the filter would link a pseudonym to a record); use group")
        if deidentified and not settings.pseudonym_key:
            raise FHIRError(503, "security", "de-identified output needs the network's pseudonym secret (ADAPTER_PSEUDONYM_KEY)")
        patients: list[str] | None = None
        if groups:
            patients = []
            for gid in groups:
                if store.read("Group", gid, who.site_scope) is None:
                    raise FHIRError(404, "not-found", f"Group/{gid} is not known")
                patients += group_members(store, gid)
        if patient is not None:
            pid = str(patient).split("/")[-1]
            patients = [pid] if patients is None or pid in patients else []
        since = _one(params, "_since")
        if since is not None:
            from adapter.search.params import utc_instant

            try:  # compared with meta.lastUpdated (UTC): the offset applied
                since = utc_instant(str(since))
            except ValueError:
                raise FHIRError(400, "invalid", f"_since: {str(since)[:40]!r} is not a FHIR instant") from None
        return {"site": who.site_scope, "deidentified": deidentified, "patients": patients,
                "since": None if since is None else str(since)}

    def resources_for(request: Request, view: CompiledView, params: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
        from adapter.privacy import deidentify
        from adapter.store.db import now_instant
        from adapter.store.exports import stream

        scope = export_scope(request, str(view.resource), params)
        patients = scope["patients"]
        for res in stream(store, str(view.resource), until=now_instant(), since=scope["since"], patients=patients,
                          patient_level=patients is not None and view.resource != "Patient", site=scope["site"]):
            yield deidentify(res, settings.pseudonym_key, settings.deidentify_birth_date,
                             settings.deidentify_date_shift_days) if scope["deidentified"] else res

    async def run(request: Request, name: str | None = None) -> Response:
        body = parse_json_body(await request.body()) if request.method == "POST" else None
        params = _params(request.query_params.multi_items(), body)
        if _one(params, "source") is not None:
            raise FHIRError(400, "not-supported", "source: external data sources are not supported; the view runs over "
                            "this server's data or the resources sent with the request")
        inline, reference = _one(params, "viewResource"), _one(params, "viewReference")
        if name is not None:
            if inline is not None or reference is not None:
                raise FHIRError(400, "invalid", "at instance level the view is the one in the URL: no viewResource or viewReference")
            reference = name
        if (inline is None) == (reference is None):
            raise FHIRError(400, "invalid", "give exactly one of viewResource and viewReference")
        fmt = _one(params, "_format")
        if fmt is None:
            accept = request.headers.get("accept", "")
            fmt = next((f for mime, f in _ACCEPT.items() if mime in accept), "json")
        fmt = str(fmt).lower()
        if fmt not in FORMATS:
            raise FHIRError(400, "invalid", f"_format {fmt[:20]!r}: one of {', '.join(FORMATS)}")
        header = _one(params, "header")
        header_on = header is None or header is True or str(header).lower() == "true"
        if header is not None and str(header).lower() not in ("true", "false"):
            raise FHIRError(400, "invalid", "header: true or false")
        limit = _one(params, "_limit")
        try:
            max_rows = None if limit is None else int(limit)
        except (TypeError, ValueError):
            raise FHIRError(400, "invalid", "_limit: a positive integer") from None
        if max_rows is not None and not 0 < max_rows <= _MAX_LIMIT:
            raise FHIRError(400, "invalid", f"_limit: between 1 and {_MAX_LIMIT}")
        try:
            view = CompiledView(inline if inline is not None else lookup(reference))
        except ViewDefinitionError as exc:
            raise FHIRError(400, "invalid", f"ViewDefinition: {exc}") from None
        given = params.get("resource")
        if given is not None:
            require(request, "export", str(view.resource), "system")
            if not all(isinstance(r, dict) for r in given):
                raise FHIRError(400, "invalid", "resource: FHIR resources")
            source: Iterable[dict[str, Any]] = given
        else:
            source = resources_for(request, view, params)
        def collect() -> bytes:
            rows: list[dict[str, Any]] = []
            try:
                for row in view.rows(source):
                    rows.append(row)
                    if max_rows is not None and len(rows) >= max_rows:
                        break
            except ViewDefinitionError as exc:
                raise FHIRError(422, "processing", f"ViewDefinition: {exc}") from None
            try:
                return render(rows, view.columns, fmt, header_on)
            except ValueError as exc:
                raise FHIRError(422, "processing", f"ViewDefinition: {exc}") from None

        # FHIRPath is CPU work: a worker thread, so that the event loop keeps serving other requests
        return Response(await run_in_threadpool(collect), media_type=FORMATS[fmt])

    for path in ("/$viewdefinition-run", "/ViewDefinition/$viewdefinition-run"):
        level = "system" if path.startswith("/$") else "type"
        for method in ("get", "post"):
            getattr(app, method)(path, summary=f"SQL on FHIR $viewdefinition-run ({level} level)",
                                 operation_id=f"viewdefinition_run_{level}_{method}")(run)

    async def run_instance(name: str, request: Request) -> Response:
        return await run(request, name)

    for method in ("get", "post"):
        getattr(app, method)("/ViewDefinition/{name}/$viewdefinition-run", summary="SQL on FHIR $viewdefinition-run of a project view",
                             operation_id=f"viewdefinition_run_instance_{method}")(run_instance)

    @app.get("/ViewDefinition", summary="The project's SQL on FHIR ViewDefinitions", operation_id="viewdefinition_list")
    def list_views(request: Request) -> Response:
        views = _views()
        bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(views),
                  "entry": [{"fullUrl": v["url"], "resource": v} for v in views.values()]}
        return Response(orjson.dumps(bundle), media_type="application/fhir+json")

    @app.get("/ViewDefinition/{name}", summary="One of the project's SQL on FHIR ViewDefinitions", operation_id="viewdefinition_read")
    def read_view(name: str, request: Request) -> Response:
        return Response(orjson.dumps(lookup(name)), media_type="application/fhir+json")

    # ------------------------------------------------------------------ $viewdefinition-export

    from adapter.bulk.views_export import KIND
    from adapter.store.exports import ExportJobs

    jobs = ExportJobs(store)

    def _export_views(body: Any) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
        """The ``view`` parameters (each ``{"name", "view"}``) and the other parameters by name.
        Every view is checked before anything starts; all problems are reported at once, each
        with its ``parameter[i]`` (the operation's notes, "Multiple ViewDefinitions with Errors")."""
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FHIRError(400, "invalid", "POST $viewdefinition-export takes a Parameters resource")
        views: list[dict[str, Any]] = []
        others: dict[str, Any] = {"resourceType": "Parameters", "parameter": []}
        problems: list[tuple[str, str]] = []
        for i, p in enumerate(body.get("parameter") or []):
            if not isinstance(p, dict) or p.get("name") != "view":
                others["parameter"].append(p)
                continue
            parts = {q.get("name"): q for q in p.get("part") or [] if isinstance(q, dict)}
            inline = (parts.get("viewResource") or {}).get("resource")
            ref = ((parts.get("viewReference") or {}).get("valueReference") or {}).get("reference")
            try:
                if (inline is None) == (ref is None):
                    raise FHIRError(400, "invalid", "give exactly one of viewResource and viewReference")
                view = inline if inline is not None else lookup(ref)
                compiled = CompiledView(view)
            except ViewDefinitionError as exc:
                problems.append((f"parameter[{i}]", f"ViewDefinition: {exc}"))
                continue
            except FHIRError as exc:
                problems.append((f"parameter[{i}]", exc.diagnostics))
                continue
            name = (parts.get("name") or {}).get("valueString") or view.get("name") or f"view_{len(views) + 1}"
            if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", str(name)) or any(v["name"] == name for v in views):
                problems.append((f"parameter[{i}]", f"view name {str(name)[:64]!r}: letters, digits, _ and -, unique in the request"))
                continue
            views.append({"name": name, "view": view, "resource": str(compiled.resource)})
        if problems:
            raise FHIRError(400, "invalid", "; ".join(f"{where}: {what}" for where, what in problems),
                            issues=[{"severity": "error", "code": "invalid", "diagnostics": what, "expression": [where]}
                                    for where, what in problems])
        if not views:
            raise FHIRError(400, "required", "view: at least one ViewDefinition to export")
        return views, _params((), others)

    async def export_kickoff(request: Request) -> Response:
        prefer = {t.strip().lower() for t in request.headers.get("prefer", "").split(",")}
        if "respond-async" not in prefer:
            raise FHIRError(400, "invalid", "$viewdefinition-export is asynchronous: send the header Prefer: respond-async")
        views, params = _export_views(parse_json_body(await request.body()))
        if _one(params, "source") is not None:
            raise FHIRError(400, "not-supported", "source: external data sources are not supported")
        fmt = str(_one(params, "_format") or "ndjson").lower()
        if fmt not in FORMATS:
            raise FHIRError(400, "invalid", f"_format {fmt[:20]!r}: one of {', '.join(FORMATS)}")
        header = _one(params, "header")
        if header is not None and str(header).lower() not in ("true", "false"):
            raise FHIRError(400, "invalid", "header: true or false")
        scope: dict[str, Any] = {}
        for v in views:  # the $export rules, on every view's resource type
            scope = export_scope(request, v["resource"], params)
        tracking = _one(params, "clientTrackingId")
        base = base_of(request)
        job_id = str(uuid.uuid4())
        job_params = {"kind": KIND, "base": base, "owner": principal(request).client_id, "format": fmt,
                      "header": header is None or str(header).lower() == "true", "clientTrackingId": tracking,
                      "views": [{"name": v["name"], "view": v["view"]} for v in views], **scope}
        if not jobs.create(job_id, str(request.url), job_params, settings.export_max_jobs):
            raise FHIRError(429, "throttled", f"{settings.export_max_jobs} export(s) are already running; retry later",
                            headers={"Retry-After": "30"})
        status = f"{base}/$viewdefinition-export/{job_id}/status"
        out = _export_parameters(job_id, tracking, "accepted", [{"name": "location", "valueUri": status}])
        return Response(orjson.dumps(out), status_code=202, media_type="application/fhir+json",
                        headers={"Content-Location": status})

    for path in ("/$viewdefinition-export", "/ViewDefinition/$viewdefinition-export"):
        level = "system" if path.startswith("/$") else "type"
        app.post(path, summary=f"SQL on FHIR $viewdefinition-export ({level} level, asynchronous)", status_code=202,
                 operation_id=f"viewdefinition_export_{level}")(export_kickoff)

    def _export_parameters(job_id: str, tracking: Any, status: str, more: list[dict[str, Any]]) -> dict[str, Any]:
        params = [{"name": "exportId", "valueString": job_id}]
        if tracking:
            params.append({"name": "clientTrackingId", "valueString": str(tracking)})
        params.append({"name": "status", "valueCode": status})
        return {"resourceType": "Parameters", "parameter": params + more}

    def _view_job(request: Request, jid: str) -> Any:
        job = jobs.get(jid)
        if (job is None or job.status in ("cancelled", "expired") or job.params.get("kind") != KIND
                or job.params.get("owner") != principal(request).client_id):
            raise FHIRError(404, "not-found", f"no view export {jid[:40]} (unknown, cancelled or expired)")
        return job

    @app.get("/$viewdefinition-export/{jid}/status", summary="$viewdefinition-export status: 202 while it runs, then 303 to the result",
             operation_id="viewdefinition_export_status")
    def export_status(jid: str, request: Request) -> Response:
        job = _view_job(request, jid)
        if job.status in ("accepted", "in-progress"):
            out = _export_parameters(jid, job.params.get("clientTrackingId"), "in-progress",
                                     [{"name": "exportStartTime", "valueInstant": job.created}])
            return Response(orjson.dumps(out), status_code=202, media_type="application/fhir+json",
                            headers={"X-Progress": job.progress or "queued", "Retry-After": "1"})
        return Response(status_code=303, headers={"Location": f"{job.params['base']}/$viewdefinition-export/{jid}/result"})

    @app.delete("/$viewdefinition-export/{jid}/status", summary="Cancel a $viewdefinition-export, or delete its files",
                operation_id="viewdefinition_export_cancel")
    def export_cancel(jid: str, request: Request) -> Response:
        _view_job(request, jid)
        if not jobs.cancel(jid):
            raise FHIRError(404, "not-found", f"no view export {jid[:40]} to cancel")
        shutil.rmtree(settings.export_dir / jid, ignore_errors=True)
        return Response(orjson.dumps(operation_outcome("informational", f"view export {jid} cancelled and its files deleted",
                                                       severity="information")),
                        status_code=202, media_type="application/fhir+json")

    @app.get("/$viewdefinition-export/{jid}/result", summary="$viewdefinition-export result: the output files",
             operation_id="viewdefinition_export_result")
    def export_result(jid: str, request: Request) -> Response:
        job = _view_job(request, jid)
        if job.status in ("accepted", "in-progress"):
            raise FHIRError(409, "conflict", f"view export {jid} is still running: poll its status URL")
        if job.status == "failed":
            raise FHIRError(500, "exception", f"the view export failed: {job.error}")
        base = job.params["base"]
        more: list[dict[str, Any]] = [
            {"name": "_format", "valueCode": job.manifest["format"]},
            {"name": "exportStartTime", "valueInstant": job.created},
            {"name": "exportEndTime", "valueInstant": job.finished},
        ]
        for o in job.manifest["output"]:
            more.append({"name": "output", "part": [
                {"name": "name", "valueString": o["name"]},
                {"name": "location", "valueUri": f"{base}/$viewdefinition-export/{jid}/{o['file']}"},
                {"name": "count", "valueInteger": o["count"]}]})
        expires = datetime.fromisoformat(job.finished) + timedelta(seconds=settings.export_expiry_seconds)
        return Response(orjson.dumps(_export_parameters(jid, job.params.get("clientTrackingId"), "completed", more)),
                        media_type="application/fhir+json", headers={"Expires": http_date(expires.isoformat())})

    @app.get("/$viewdefinition-export/{jid}/{name}", summary="A $viewdefinition-export output file",
             operation_id="viewdefinition_export_file")
    def export_file(jid: str, name: str, request: Request) -> Response:
        job = _view_job(request, jid)
        files = {o["file"]: job.manifest["format"] for o in (job.manifest or {}).get("output", [])} if job.status == "completed" else {}
        if name not in files:
            raise FHIRError(404, "not-found", f"view export {jid[:40]} has no file {name[:80]}")
        path = settings.export_dir / jid / name
        if not path.is_file():
            raise FHIRError(404, "not-found", f"the file {name} has expired")
        return FileResponse(path, media_type=FORMATS[files[name]], filename=name)
