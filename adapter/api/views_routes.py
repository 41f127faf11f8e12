"""SQL on FHIR v2 ``$viewdefinition-run`` (https://sql-on-fhir.org/ig/OperationDefinition-ViewDefinitionRun.html):
a ViewDefinition applied to the server's data (or to resources sent with the request), answered
synchronously as JSON, NDJSON, CSV or Parquet (adapter/views/output.py).

- ``GET|POST /$viewdefinition-run`` (R4 mode: system level) and ``/ViewDefinition/$viewdefinition-run``
  (type level): the view is ``viewResource`` (inline, POST only) or ``viewReference``
  (``ViewDefinition/<name>`` or the canonical URL of one of the project's views in ``views/``);
- ``GET|POST /ViewDefinition/{name}/$viewdefinition-run`` (instance level) runs a project view;
- ``GET /ViewDefinition`` lists the project's views (a searchset Bundle), ``GET /ViewDefinition/{name}``
  reads one.

Parameters: ``_format`` (``json``, ``ndjson``, ``csv``, ``parquet``; or the ``Accept`` header),
``header`` (CSV header line, default true), ``patient``, ``group`` (repeatable), ``_since``,
``_limit``, ``resource`` (POST: transform these resources instead of the server's). ``source`` is
refused with 400 (not supported).

Authorization is that of ``$export`` (adapter/auth/policy.py), on the view's resource type: a site
client sees its site's resources only; a coordinator must name a ``group`` and gets the view over
de-identified resources (adapter/privacy.py), where a ``patient`` filter is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from adapter.api.fhir_http import FHIRError, parse_json_body
from adapter.api.security import require
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


def _params(request: Request, body: Any) -> dict[str, list[Any]]:
    """Operation parameters by name: the query string, plus a POSTed Parameters resource (values as
    their ``value[x]``, ``resource`` or ``valueReference.reference``)."""
    out: dict[str, list[Any]] = {}
    for k, v in request.query_params.multi_items():
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


def add_view_routes(app: FastAPI, store: Store, settings: Settings) -> None:
    """Register the routes (before the generic ``/{type}`` ones)."""
    from adapter.views.runner import CompiledView, ViewDefinitionError

    def lookup(ref: Any) -> dict[str, Any]:
        views = _views()
        text = str(ref or "")
        name = text.split("/")[-1] if text.startswith(("ViewDefinition/", "http")) else text
        view = views.get(name)
        if view is None or (text.startswith("http") and view.get("url") != text):
            raise FHIRError(404, "not-found", f"no ViewDefinition {text[:120]!r}; known: {', '.join(sorted(views))}")
        return view

    def resources_for(request: Request, view: CompiledView, params: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
        from adapter.bulk.runner import group_members
        from adapter.privacy import deidentify
        from adapter.store.db import now_instant
        from adapter.store.exports import stream

        groups = [str(g).split("/")[-1] for g in params.get("group") or []]
        who = require(request, "export", str(view.resource), "group" if groups else "system")
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
            from adapter.search.params import date_range

            try:
                date_range(str(since))
            except ValueError:
                raise FHIRError(400, "invalid", f"_since: {str(since)[:40]!r} is not a FHIR instant") from None
        for res in stream(store, str(view.resource), until=now_instant(), since=since, patients=patients,
                          patient_level=patients is not None and view.resource != "Patient", site=who.site_scope):
            yield deidentify(res, settings.pseudonym_key, settings.deidentify_birth_date,
                             settings.deidentify_date_shift_days) if deidentified else res

    async def run(request: Request, name: str | None = None) -> Response:
        body = parse_json_body(await request.body()) if request.method == "POST" else None
        params = _params(request, body)
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
