"""The FHIR R4 REST service (FastAPI).

Interactions (FHIR R4 §3.1.0 "RESTful API"): capabilities, read, vread, instance history, search
(GET and POST ``_search``), create (with ``If-None-Exist``), update (with ``If-Match``), conditional
update, delete, batch/transaction, ``Patient/$everything``, ``$validate``, and our ``$ingest``.
Every body is ``application/fhir+json``; every error is an OperationOutcome with its HTTP status.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import FastAPI, File, Form, Header, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapter.api import writes
from adapter.api.capability import capability_statement
from adapter.api.fhir_http import (
    FHIRError,
    FHIRResponse,
    etag,
    operation_outcome,
    parse_if_match,
    parse_json_body,
    require_resource,
    resource_headers,
    searchset,
)
from adapter.api.security import principal, require
from adapter.api.subsetting import subset
from adapter.config import Settings, get_settings
from adapter.errors import AdapterError, ConfigError, IngestRejected, ReaderError, StoreBusy
from adapter.privacy import DeidentifiedFilterError, PseudonymKeyMissing, check_deidentified_query, deidentify
from adapter.search.params import PARAMS
from adapter.search.query import CONTROL, SearchError, parse
from adapter.store import Store
from adapter.store.db import OutsideSite, now_instant
from adapter.validation import Validator, get_validator

log = logging.getLogger("adapter.api")

#: Resource types served (searchable, readable, writable).
SERVED = tuple(sorted(PARAMS))


class _NoQueryInAccessLog(logging.Filter):
    """Drop the query string from uvicorn's access log lines: search parameters can hold local
    identifiers (``identifier=…|014240``), and record numbers never go to logs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def create_app(settings: Settings | None = None, store: Store | None = None, validator: Validator | None = None) -> FastAPI:
    """Build the service. ``store`` defaults to the configured database (migrated on start)."""
    settings = settings or get_settings()
    if store is None:
        store = Store(settings.database_url, busy_seconds=settings.sqlite_busy_seconds)
        store.migrate()
    validator = validator or get_validator()
    app = FastAPI(title="pedall FHIR adapter", version="0.1.0",
                  description="FHIR R4 adapter for multicenter pediatric leukemia outcome studies",
                  default_response_class=FHIRResponse, lifespan=_lifespan)
    app.state.settings, app.state.store, app.state.validator = settings, store, validator
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _NoQueryInAccessLog) for f in access.filters):
        access.addFilter(_NoQueryInAccessLog())
    _errors(app)
    _openapi(app)
    from adapter.api.security import SecurityMiddleware, add_security_routes
    from adapter.store.audit_spool import AuditSpool
    from adapter.store.security import AuditTrail

    app.state.audit_spool = AuditSpool(AuditTrail(store), settings.audit_spool_dir)
    from adapter.api.negotiation import NegotiationMiddleware

    app.add_middleware(NegotiationMiddleware)  # 406/415 on FHIR routes, inside the audit (added before it)
    app.add_middleware(SecurityMiddleware, settings=settings, store=store, spool=app.state.audit_spool)
    add_security_routes(app, store, settings, lambda request: _base(request, settings))
    from adapter.api.ops import add_ops

    delivery_seconds = add_ops(app, store)  # health, metrics, request ids (outermost)
    from adapter.api.outcomes_routes import add_outcome_routes

    add_outcome_routes(app, store, settings)  # before the generic /{type} routes
    from adapter.ui.routes import add_ui_routes

    add_ui_routes(app, store, settings)
    from adapter.api.bulk_routes import add_bulk_routes
    from adapter.bulk.runner import ExportWorker

    add_bulk_routes(app, store, settings, lambda request: _base(request, settings))
    from adapter.api.views_routes import add_view_routes

    add_view_routes(app, store, settings, lambda request: _base(request, settings))  # SQL on FHIR $viewdefinition-run, before the generic /{type} routes
    _routes(app, settings, store, validator)
    app.state.export_worker = ExportWorker(store, settings)
    from adapter.subscriptions.delivery import DeliveryWorker

    app.state.delivery_worker = DeliveryWorker(store, settings)
    app.state.delivery_worker.on_delivered = delivery_seconds.observe
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Run the Bulk Data export worker (adapter/bulk/runner.py), the subscription delivery worker
    (adapter/subscriptions/delivery.py) and the audit spool's drain (adapter/store/audit_spool.py)
    while the service runs."""
    workers = [app.state.export_worker, app.state.delivery_worker, app.state.audit_spool]
    for w in workers:
        w.start()
    try:
        yield
    finally:
        for w in workers:
            w.stop()


_RESOURCE_SCHEMA = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}
_OUTCOME_SCHEMA = {"type": "object", "required": ["resourceType", "issue"],
                   "properties": {"resourceType": {"const": "OperationOutcome"}, "issue": {"type": "array", "minItems": 1}}}


def _openapi(app: FastAPI) -> None:
    """Document FHIR bodies as JSON objects with a ``resourceType`` (FastAPI would call them
    strings), and every error as an OperationOutcome."""
    from fastapi.openapi.utils import get_openapi

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path, ops in doc["paths"].items():
            for op in ops.values():
                for resp in op.get("responses", {}).values():
                    content = resp.get("content", {})
                    if "application/fhir+json" in content:
                        content["application/fhir+json"]["schema"] = _RESOURCE_SCHEMA
                op["responses"]["4XX"] = {"description": "OperationOutcome",
                                          "content": {"application/fhir+json": {"schema": _OUTCOME_SCHEMA}}}
                if path == "/auth/token":  # OAuth 2.0 errors (RFC 6749 §5.2), not FHIR
                    op["responses"]["4XX"] = {"description": "OAuth 2.0 error", "content": {"application/json": {
                        "schema": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}}}}
                op["responses"].pop("422", None)
        app.openapi_schema = doc
        return doc

    app.openapi = build  # type: ignore[method-assign]


def _base(request: Request, settings: Settings) -> str:
    return (settings.base_url or str(request.base_url)).rstrip("/")


def _errors(app: FastAPI) -> None:
    @app.exception_handler(FHIRError)
    async def fhir_error(_: Request, exc: FHIRError) -> FHIRResponse:
        return FHIRResponse(exc.outcome(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> FHIRResponse:
        issues = [{"severity": "error", "code": "invalid",
                   "diagnostics": f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"} for e in exc.errors()]
        return FHIRResponse(operation_outcome("invalid", "the request is not valid", issues=issues), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> FHIRResponse:
        code = {404: "not-found", 405: "not-supported", 413: "too-long"}.get(exc.status_code, "processing")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 §15.5.6: a 405 names every method the resource has
            allowed = sorted({m for r in app.router.routes if getattr(r, "path_regex", None) is not None
                              and r.path_regex.match(request.url.path) for m in (getattr(r, "methods", None) or ())})
            headers["Allow"] = ", ".join(allowed)
            detail = f"{request.method} is not allowed here; allowed: {headers['Allow']}"
        else:
            detail = str(exc.detail)
        return FHIRResponse(operation_outcome(code, detail), status_code=exc.status_code, headers=headers or None)

    @app.exception_handler(AdapterError)
    async def adapter_error(_: Request, exc: AdapterError) -> FHIRResponse:
        if isinstance(exc, StoreBusy):  # waited too long for a lock: nothing stored, send it again later
            return FHIRResponse(operation_outcome("transient", str(exc)), status_code=503,
                                headers={"Retry-After": str(exc.retry_after)})
        if isinstance(exc, OutsideSite):
            return FHIRResponse(operation_outcome("forbidden" if exc.found else "not-found", str(exc)),
                                status_code=403 if exc.found else 404)
        if isinstance(exc, ConfigError):
            return FHIRResponse(operation_outcome("not-found", str(exc)), status_code=400)
        if isinstance(exc, ReaderError):
            return FHIRResponse(operation_outcome("invalid", str(exc)), status_code=422)
        log.error("store or adapter error: %s", exc.__class__.__name__)
        return FHIRResponse(operation_outcome("exception", "the server could not complete the request"), status_code=500)

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> FHIRResponse:
        log.exception("unhandled error: %s", exc.__class__.__name__)
        return FHIRResponse(operation_outcome("exception", "internal error"), status_code=500)


def _served(rtype: str) -> str:
    if rtype not in SERVED:
        raise FHIRError(404, "not-supported", f"resource type '{rtype}' is not served here (served: {', '.join(SERVED)})")
    return rtype


def _body_resource(body: bytes, rtype: str | None = None) -> dict[str, Any]:
    return require_resource(parse_json_body(body), rtype)


def _routes(app: FastAPI, settings: Settings, store: Store, validator: Validator) -> None:  # noqa: C901
    @app.get("/metadata", summary="CapabilityStatement")
    def metadata(request: Request) -> FHIRResponse:
        from adapter.api.security import audience

        return FHIRResponse(capability_statement(_base(request, settings), settings.profiles_dir, settings.auth_enabled,
                                                 audience(settings, request.scope)))

    @app.post("/$ingest", summary="Ingest a site export (multipart: file, site, mapping)")
    def ingest(request: Request, file: Annotated[UploadFile, File()], site: Annotated[str, Form()],
               mapping: Annotated[str, Form()], strict: Annotated[bool, Form()] = False,
               dry_run: Annotated[bool, Form()] = False) -> FHIRResponse:
        from adapter.ingest import ingest_file

        who = require(request, "ingest")
        if who.site_scope is not None and site != who.site_scope:
            raise FHIRError(403, "forbidden", f"a client of site {who.site_scope} ingests for its own site only")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + 64 * 1024:
            raise FHIRError(413, "too-long", f"the upload is larger than the limit of {settings.max_upload_bytes} bytes")
        name = Path(file.filename or "upload").name
        if name in ("", ".", "..") or len(name.encode("utf-8", "surrogatepass")) > 255 or CONTROL.search(name):
            raise FHIRError(400, "invalid", "file: the upload's file name must be a plain name of at most 255 bytes "
                            "(not '.', '..', empty, or holding control characters)")
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / name
            size = 0
            with path.open("wb") as out:
                while chunk := file.file.read(1 << 20):
                    size += len(chunk)
                    if size > settings.max_upload_bytes:
                        raise FHIRError(413, "too-long", f"the upload is larger than the limit of {settings.max_upload_bytes} bytes")
                    out.write(chunk)
            try:
                report = ingest_file(path, site, mapping, store, strict=strict, dry_run=dry_run, settings=settings,
                                     validator=validator, display_name=name)
            except IngestRejected as exc:
                rep = getattr(exc, "report", None)
                outcome = rep.operation_outcome() if rep is not None else operation_outcome("invalid", str(exc))
                outcome["issue"].insert(0, {"severity": "error", "code": "invalid", "diagnostics": str(exc)})
                return FHIRResponse(outcome, status_code=422)
        return FHIRResponse(_ingest_bundle(report, _base(request, settings)), headers={"X-Ingestion-Id": report.ingestion_id})

    @app.post("/", summary="Batch or transaction Bundle")
    async def bundle(request: Request) -> FHIRResponse:
        who = principal(request)
        doc = _body_resource(await request.body(), "Bundle")
        base = _base(request, settings)

        def allow(op: str, rtype: str) -> None:
            if not who.allows(op, rtype):
                raise FHIRError(403, "forbidden", f"the {who.role} role or the token's scopes do not allow {op} on {rtype}")

        return FHIRResponse(await _threaded(lambda: writes.process_bundle(store, validator, doc, base, allow=allow,
                                                                          site=who.site_scope, principal=who,
                                                                          settings=settings)))

    @app.get("/Patient/{rid}/$everything", summary="Everything about one patient")
    @app.post("/Patient/{rid}/$everything", summary="Everything about one patient (parameters in a Parameters body)")
    async def everything(request: Request, rid: str) -> FHIRResponse:
        """R4 Patient-everything (OperationDefinition Patient-everything) by GET or POST (a
        Parameters body): ``start``/``end`` (care dates), ``_since`` (meta.lastUpdated after this
        instant, with its offset), ``_type`` (resource types), ``_count`` (page size; ``next``
        links page on with ``_offset``)."""
        from adapter.api.everything import everything_parameters, select_everything

        site = require(request, "everything", "Patient").site_scope
        body = await request.body() if request.method == "POST" else b""
        args = everything_parameters(list(request.query_params.multi_items()), body)
        base = _base(request, settings)

        def work() -> dict[str, Any]:  # the store's reads, off the event loop
            state, patient = store.read_state("Patient", rid, site)
            if patient is None:
                raise FHIRError(410 if state == "deleted" else 404, "deleted" if state == "deleted" else "not-found",
                                f"Patient/{rid} is {'deleted' if state == 'deleted' else 'not known'}")
            res = [patient, *store.compartment(rid, site)]
            org = (patient.get("managingOrganization") or {}).get("reference", "")
            if org.startswith("Organization/"):
                o = store.read("Organization", org.split("/", 1)[1], site)
                if o:
                    res.append(o)
            return select_everything(res, args, f"{base}/Patient/{rid}/$everything", base)

        bundle = await _threaded(work)
        return FHIRResponse(_deidentified_bundle(bundle, settings) if _wants_deid(request) else bundle)

    @app.get("/Group/{gid}/$everything", summary="Everything about a small Group's members (collection Bundle)")
    def group_everything(request: Request, gid: str) -> FHIRResponse:
        """The Group, then each active member's Patient, compartment and managing Organization, as a
        ``collection`` Bundle; a Group of more than ``group_everything_max_patients`` members is
        refused (413) in favour of ``/Group/{id}/$export``, which streams."""
        from adapter.bulk.runner import group_members

        site = require(request, "everything", "Group").site_scope
        group = store.read("Group", gid, site)
        if group is None:
            raise FHIRError(404, "not-found", f"Group/{gid} is not known")
        members = group_members(store, gid)
        if len(members) > settings.group_everything_max_patients:
            raise FHIRError(413, "too-costly", f"Group/{gid} has {len(members)} members, more than "
                            f"{settings.group_everything_max_patients}: use GET /Group/{gid}/$export (Bulk Data)")
        base = _base(request, settings)
        res: list[dict[str, Any]] = [group]
        orgs: dict[str, dict[str, Any]] = {}
        for pid in members:
            patient = store.read("Patient", pid, site)
            if patient is None:  # a member deleted since the Group was written (or of another site)
                continue
            res += [patient, *store.compartment(pid, site)]
            org = (patient.get("managingOrganization") or {}).get("reference", "")
            if org.startswith("Organization/") and org not in orgs:
                found = store.read("Organization", org.split("/", 1)[1], site)
                if found:
                    orgs[org] = found
        res += orgs.values()
        bundle = {"resourceType": "Bundle", "type": "collection", "timestamp": now_instant(),
                  "entry": [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r} for r in res]}
        return FHIRResponse(_deidentified_bundle(bundle, settings) if _wants_deid(request) else bundle)

    def _subscription(request: Request, sid: str) -> tuple[dict[str, Any], Any]:
        from adapter.subscriptions.spec import SubscriptionError, parse_subscription

        res = store.read("Subscription", sid, require(request, "subscription-op", "Subscription").site_scope)
        if res is None:
            raise FHIRError(404, "not-found", f"Subscription/{sid} is not known")
        try:
            return res, parse_subscription(res)
        except SubscriptionError as exc:
            raise FHIRError(422, "processing", f"Subscription/{sid}: {exc}") from None

    @app.get("/Subscription/{sid}/$status", summary="Subscription status (Subscriptions Backport IG $status)")
    def subscription_status(request: Request, sid: str) -> FHIRResponse:
        from adapter.store.outbox import event_count
        from adapter.subscriptions.notify import status_parameters

        res, spec = _subscription(request, sid)
        with store.engine.connect() as conn:
            since = event_count(conn, sid)
        params = status_parameters(sid, spec.topic or res.get("criteria", ""), res.get("status", ""), "query-status", since, [])
        if res.get("error"):
            params["parameter"].append({"name": "error", "valueCodeableConcept": {"text": res["error"]}})
        return FHIRResponse({"resourceType": "Bundle", "type": "searchset", "total": 1,
                             "entry": [{"fullUrl": f"urn:uuid:{params['id']}", "resource": params,
                                        "search": {"mode": "match"}}]})

    @app.get("/Subscription/{sid}/$events", summary="Replay a Subscription's events by number (Backport IG $events)")
    def subscription_events(request: Request, sid: str, eventsSinceNumber: int | None = None,  # noqa: N803
                            eventsUntilNumber: int | None = None, content: str | None = None) -> FHIRResponse:  # noqa: N803
        from adapter.store.outbox import event_count, events_between
        from adapter.subscriptions.notify import Event, notification_bundle

        res, spec = _subscription(request, sid)
        content = content or spec.content if spec.topic else content or ("full-resource" if spec.full_resource else "id-only")
        if content not in ("empty", "id-only", "full-resource"):
            raise FHIRError(400, "invalid", "content must be empty, id-only or full-resource")
        if content != "empty":  # the events name (or carry) resources: the caller must be allowed to read them
            require(request, "read", spec.query.type)
        for name, value in (("eventsSinceNumber", eventsSinceNumber), ("eventsUntilNumber", eventsUntilNumber)):
            if value is not None and not 0 <= value <= 2**31 - 1:
                raise FHIRError(400, "invalid", f"{name} must be a whole number from 0 to {2**31 - 1}")
        with store.engine.connect() as conn:
            total = event_count(conn, sid)
            first = max(1, eventsSinceNumber or 1)
            last = min(total, eventsUntilNumber if eventsUntilNumber is not None else total)
            rows = events_between(conn, sid, first, last) if first <= last else []
        events = [Event(r["event_number"], r["created"], f"{r['resource_type']}/{r['resource_id']}",
                        store.vread(r["resource_type"], r["resource_id"], r["version_id"])[1]
                        if content == "full-resource" else None) for r in rows]
        return FHIRResponse(notification_bundle(sid, spec.topic or res.get("criteria", ""), res.get("status", ""),
                                                "query-event", total, events, content))

    @app.post("/{rtype}/$validate", summary="Validate a resource (R4 schema, R4B model, profiles)")
    async def validate(rtype: str, request: Request) -> FHIRResponse:
        require(request, "validate")
        doc = parse_json_body(await request.body())
        if isinstance(doc, dict) and doc.get("resourceType") == "Parameters":  # $validate's Parameters form
            params = doc.get("parameter", [])
            if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
                raise FHIRError(400, "invalid", "Parameters.parameter must be a list of parameters (objects with a name)")
            doc = next((p.get("resource") for p in params if p.get("name") == "resource"), None)
        res = require_resource(doc, rtype)
        issues = [i.to_operation_outcome_issue() for i in validator.validate(res, full=True)]
        if issues:
            return FHIRResponse({"resourceType": "OperationOutcome", "issue": issues}, status_code=422)
        return FHIRResponse(operation_outcome("informational", f"{rtype} is valid against the R4 schema, the R4B model and "
                                              "its profiles", severity="information"))

    @app.get("/{rtype}", summary="Search")
    def search_get(rtype: str, request: Request) -> FHIRResponse:
        return _search(request, _served(rtype), list(request.query_params.multi_items()))

    @app.post("/{rtype}/_search", summary="Search (form-encoded parameters)")
    async def search_post(rtype: str, request: Request) -> FHIRResponse:
        body = (await request.body()).decode("utf-8", errors="replace")
        items = list(request.query_params.multi_items()) + parse_qsl(body, keep_blank_values=True)
        return _search(request, _served(rtype), items)

    def _search(request: Request, rtype: str, items: list[tuple[str, str]]) -> FHIRResponse:
        site = require(request, "search", rtype).site_scope
        lenient = "handling=lenient" in request.headers.get("prefer", "")
        deid = _deid_flag([v for k, v in items if k == "_deidentify"])
        items = [(k, v) for k, v in items if k != "_deidentify"]
        try:
            q = parse(rtype, items, lenient=lenient, base=_base(request, settings))
            if deid:  # no filter on what the de-identified output removes or coarsens
                check_deidentified_query(q, settings.deidentify_birth_date, settings.deidentify_date_shift_days)
        except (SearchError, DeidentifiedFilterError) as exc:
            raise FHIRError(400, "invalid", str(exc)) from None
        snapshot = q.snapshot or now_instant()
        who = principal(request)
        for t in [*(i.target for i in q.include if i.target), *(r.source for r in q.revinclude)]:
            require(request, "read", t)  # included types need read access too
        result = store.search(q, snapshot, site)
        if any(not who.allows("read", r["resourceType"]) for r in result.included):  # _include without a target type
            result.included = [r for r in result.included if who.allows("read", r["resourceType"])]
        bundle = searchset(q, result, snapshot, _base(request, settings))
        return FHIRResponse(_deidentified_bundle(bundle, settings) if deid else bundle)

    @app.post("/{rtype}", summary="Create")
    async def create(rtype: str, request: Request,
                     if_none_exist: Annotated[str | None, Header()] = None) -> FHIRResponse:
        who = require(request, "create", _served(rtype))
        res = _body_resource(await request.body(), rtype)
        w = await _threaded(_write, store, lambda tx: writes.create(tx, validator, res, if_none_exist), who, settings)
        return _written(w, _base(request, settings), request)

    @app.put("/{rtype}", summary="Conditional update (PUT Type?search)")
    async def conditional_update(rtype: str, request: Request) -> FHIRResponse:
        query = request.url.query
        if not query:
            raise FHIRError(400, "invalid", "PUT needs Type/id or Type?search")
        who = require(request, "update", _served(rtype))
        res = _body_resource(await request.body(), rtype)
        w = await _threaded(_write, store, lambda tx: writes.conditional_update(tx, validator, rtype, query, res), who, settings)
        return _written(w, _base(request, settings), request)

    @app.put("/{rtype}/{rid}", summary="Update (If-Match for version-aware updates)")
    async def update(rtype: str, rid: str, request: Request, if_match: Annotated[str | None, Header()] = None) -> FHIRResponse:
        who = require(request, "update", _served(rtype))
        res = _body_resource(await request.body(), rtype)
        version = parse_if_match(if_match)
        w = await _threaded(_write, store, lambda tx: writes.update(tx, validator, rtype, rid, res, version), who, settings)
        return _written(w, _base(request, settings), request)

    @app.delete("/{rtype}/{rid}", summary="Delete (If-Match for version-aware deletes)")
    async def delete(rtype: str, rid: str, request: Request, if_match: Annotated[str | None, Header()] = None) -> FHIRResponse:
        version = parse_if_match(if_match)
        who = require(request, "delete", _served(rtype))
        await _threaded(_write, store, lambda tx: writes.delete(tx, rtype, rid, version), who, settings)
        return FHIRResponse(operation_outcome("informational", f"{rtype}/{rid} deleted", severity="information"))

    @app.get("/{rtype}/{rid}", summary="Read")
    def read(rtype: str, rid: str, request: Request) -> FHIRResponse:
        site = require(request, "read", _served(rtype)).site_scope
        state, res = store.read_state(rtype, rid, site)
        if res is not None and _wants_deid(request):
            res = _deidentify(res, settings)
        return _one(state, res, f"{rtype}/{rid}", _base(request, settings), request)

    @app.get("/{rtype}/{rid}/_history/{vid}", summary="Version read")
    def vread(rtype: str, rid: str, vid: str, request: Request) -> FHIRResponse:
        if not vid.isascii() or not vid.isdigit() or int(vid) > 2**31 - 1:
            raise FHIRError(400, "invalid", f"version: '{vid[:40]}' is not a version number (a whole number up to {2**31 - 1})")
        site = require(request, "vread", _served(rtype)).site_scope
        state, res = store.vread(rtype, rid, int(vid), site)
        return _one(state, res, f"{rtype}/{rid}/_history/{vid}", _base(request, settings), request)

    @app.get("/{rtype}/{rid}/_history", summary="Instance history")
    def history(rtype: str, rid: str, request: Request) -> FHIRResponse:
        site = require(request, "history", _served(rtype)).site_scope
        since, count = _history_params(request)
        versions = store.history_entries(rtype, rid, site)
        if not versions:
            raise FHIRError(404, "not-found", f"{rtype}/{rid} is not known")
        if since is not None:  # R4 3.1.0.9: versions created at or after the instant
            versions = [v for v in versions if v[1] >= since]
        versions = versions[:count] if count is not None else versions
        base = _base(request, settings)
        entries = []
        for v, stamp, method, res in versions:
            entry: dict[str, Any] = {"fullUrl": f"{base}/{rtype}/{rid}",
                                     "request": {"method": method, "url": rtype if method == "POST" else f"{rtype}/{rid}"},
                                     "response": {"status": "204 No Content" if method == "DELETE" else
                                                  "201 Created" if method == "POST" else "200 OK",
                                                  "etag": f'W/"{v}"', "lastModified": stamp}}
            if method != "DELETE":
                entry["resource"] = res
            entries.append(entry)
        return FHIRResponse({"resourceType": "Bundle", "type": "history", "total": len(entries),
                             "link": [{"relation": "self", "url": f"{base}/{rtype}/{rid}/_history"}], "entry": entries})


def _history_params(request: Request) -> tuple[str | None, int | None]:
    """``(_since as UTC text, _count)`` of an instance history request (R4 §3.1.0.9: ``_since`` an
    instant, offsets applied; ``_count`` the most recent versions). Raises :class:`FHIRError` 400
    for another parameter or a bad value (general parameters ``_format``/``_pretty`` pass)."""
    from adapter.search.params import utc_instant

    since: str | None = None
    count: int | None = None
    for name, value in request.query_params.multi_items():
        if name == "_since":
            if "T" in value and not re.search(r"(Z|[+-]\d{2}:\d{2})$", value):
                raise FHIRError(400, "invalid", f"_since: {value[:40]!r} has no time zone (an instant needs one)")
            try:
                since = utc_instant(value)
            except ValueError:
                raise FHIRError(400, "invalid", f"_since: {value[:40]!r} is not a FHIR instant") from None
        elif name == "_count":
            if not value.isascii() or not value.isdigit():
                raise FHIRError(400, "invalid", f"_count: {value[:40]!r} is not a non-negative integer")
            count = int(value)
        elif name not in ("_format", "_pretty"):
            raise FHIRError(400, "invalid", f"history takes _since and _count, not {name[:40]!r}")
    return since, count


def _one(state: str, res: dict[str, Any] | None, what: str, base: str, request: Request | None = None) -> Response:
    """A read's answer: 404/410 for a missing or deleted resource; ``304 Not Modified`` when the
    client's ``If-None-Match`` names the current ETag or its ``If-Modified-Since`` is not older than
    ``meta.lastUpdated`` (R4 §3.1.0.3.3 "conditional read", RFC 9110 §13.1.2-3; ``If-None-Match``
    wins when both are sent); else the resource, subsetted by ``_summary``/``_elements``."""
    if res is None:
        if state == "deleted":
            raise FHIRError(410, "deleted", f"{what} has been deleted")
        raise FHIRError(404, "not-found", f"{what} is not known")
    h = resource_headers(res, base)
    h.pop("Location")
    if request is None:
        return FHIRResponse(res, headers=h)
    if _not_modified(request, res):
        return Response(status_code=304, headers=h)
    summary, elements = _subsetting(request, res["resourceType"])
    return FHIRResponse(subset(res, summary, elements), headers=h)


def _not_modified(request: Request, res: dict[str, Any]) -> bool:
    none_match = request.headers.get("if-none-match")
    if none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in none_match.split(",")}
        return "*" in tags or etag(res).removeprefix("W/") in tags
    since = request.headers.get("if-modified-since")
    updated = (res.get("meta") or {}).get("lastUpdated")
    if since and updated:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False  # RFC 9110 §13.1.3: an invalid date is ignored
        if when.tzinfo is None:
            return False
        return datetime.fromisoformat(updated).replace(microsecond=0) <= when
    return False


def _subsetting(request: Request, rtype: str) -> tuple[str | None, tuple[str, ...] | None]:
    """``_summary`` and ``_elements`` of a read (R4 §3.1.1.5.8-9). Raises :class:`FHIRError` 400
    for a bad value."""
    items = [(k, v) for k, v in request.query_params.multi_items() if k in ("_summary", "_elements")]
    if not items:
        return None, None
    try:
        q = parse(rtype, items)
    except SearchError as exc:
        raise FHIRError(400, "invalid", str(exc)) from None
    if q.summary_count:
        raise FHIRError(400, "invalid", "_summary=count applies to a search, not a read")
    return q.summary, q.elements


def _write(store: Store, fn: Any, who: Any, settings: Settings) -> writes.Written:
    """Run one REST write for principal ``who`` in a transaction confined to its site, run again
    when it lost a race (:meth:`Store.run`); a site-bound client's references are checked before it
    commits (writes.check_site_references)."""
    def work(tx: Any) -> writes.Written:
        tx.principal, tx.settings = who, settings
        w = fn(tx)
        writes.check_site_references(tx)
        return w

    return store.run(work, site=who.site_scope)


async def _threaded(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def _written(w: writes.Written, base: str, request: Request | None = None) -> Response:
    """The answer to a create or update: the resource, or as ``Prefer: return=`` asks (R4
    §3.1.0.8 / §3.1.0.4): ``minimal`` an empty body, ``OperationOutcome`` an OperationOutcome about
    the write, ``representation`` (the default) the resource; the headers in every case."""
    assert w.resource is not None
    headers = resource_headers(w.resource, base)
    prefer = request.headers.get("prefer", "") if request is not None else ""
    wanted = next((p.split("=", 1)[1].strip().strip('"') for p in prefer.replace(";", ",").split(",")
                   if p.strip().startswith("return=")), "representation")
    if wanted == "minimal":
        return Response(status_code=w.status, headers=headers)
    if wanted == "OperationOutcome":
        what = f"{w.resource['resourceType']}/{w.resource['id']}"
        verb = {201: "created", 200: "updated or unchanged"}.get(w.status, "written")
        return FHIRResponse(operation_outcome("informational", f"{what} {verb} (version {w.resource['meta']['versionId']})",
                                              severity="information"), status_code=w.status, headers=headers)
    return FHIRResponse(w.resource, status_code=w.status, headers=headers)


def _deid_flag(values: list[str]) -> bool:
    if not values:
        return False
    if values[-1] not in ("true", "false"):
        raise FHIRError(400, "invalid", f"_deidentify must be true or false, not '{values[-1]}'")
    return values[-1] == "true"


def _wants_deid(request: Request) -> bool:
    return _deid_flag(request.query_params.getlist("_deidentify"))


def _deidentify(resource: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The coordinator's copy of a resource (adapter/privacy.py); 503 when the network's
    pseudonym secret is not configured."""
    try:
        return deidentify(resource, settings.pseudonym_key, settings.deidentify_birth_date,
                          settings.deidentify_date_shift_days)
    except PseudonymKeyMissing as exc:
        raise FHIRError(503, "security", f"de-identified output is not available: {exc}") from None


def _deidentified_bundle(bundle: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Every entry de-identified; paging links keep ``_deidentify=true`` so that no next page
    comes back identified."""
    out = {**bundle, "entry": [{**e, "resource": _deidentify(e["resource"], settings)} if "resource" in e else e
                               for e in bundle.get("entry", [])]}
    if not out["entry"]:
        out.pop("entry")
    if bundle.get("link"):
        out["link"] = [{**link, "url": link["url"] + ("&" if "?" in link["url"] else "?") + "_deidentify=true"}
                       for link in bundle["link"]]
    return out


def _ingest_bundle(report: Any, base: str) -> dict[str, Any]:
    """The ingestion report as a ``batch-response`` Bundle: one entry per resource written or left
    unchanged (a resource two rows wrote, e.g. a result and its correction, once, with its last
    version and "created" if any row created it: R4 invariant bdl-7, a fullUrl once per Bundle),
    then one entry whose ``response.outcome`` is the OperationOutcome of row issues."""
    status = {"created": "201 Created", "updated": "200 OK", "unchanged": "200 OK"}
    last: dict[tuple[str, str], Any] = {}
    created: set[tuple[str, str]] = set()
    for o in report.outcomes:
        last.pop((o.type, o.id), None)  # re-inserted: the Bundle keeps the order of the last write
        last[(o.type, o.id)] = o
        if o.outcome == "created":
            created.add((o.type, o.id))
    outcomes = [o if (o.type, o.id) not in created or o.outcome == "created" else
                dataclasses.replace(o, outcome="created") for o in last.values()]
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"{base}/{o.type}/{o.id}",
        "response": {"status": status[o.outcome], "location": f"{o.type}/{o.id}/_history/{o.version_id}",
                     "etag": f'W/"{o.version_id}"', "outcome": {
                         "resourceType": "OperationOutcome",
                         "issue": [{"severity": "information", "code": "informational", "diagnostics": o.outcome}]}},
    } for o in outcomes]
    summary = {"severity": "information", "code": "informational",
               "diagnostics": json.dumps({k: v for k, v in report.to_json().items() if k not in ("operationOutcome", "rowIssues")})}
    outcome = report.operation_outcome()
    outcome["issue"] = [summary, *outcome["issue"]]
    entries.append({"fullUrl": f"urn:uuid:{report.ingestion_id}",
                    "response": {"status": "422 Unprocessable Entity" if report.rows_rejected else "200 OK", "outcome": outcome}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": entries}
