"""Content negotiation on the FHIR REST routes (R4 §3.1.0.1.10 "Content Types and encodings"):
an ASGI middleware and the pure rule it applies.

This server speaks JSON only. On a FHIR route (a resource type, ``/`` for Bundles, or a system
operation such as ``/$export``):

- ``_format`` naming XML, or an ``Accept`` header that lists XML types only, is answered
  **406 Not Acceptable** (before, the client got JSON it had not asked for);
- a POST, PUT or PATCH whose body is not JSON (``application/fhir+json``, ``application/json``;
  ``application/json-patch+json`` for PATCH; a form for ``POST _search``, multipart for
  ``$ingest``) is answered **415 Unsupported Media Type**; a request without a body needs no type.

Both answers are OperationOutcomes naming what was sent and what is served. A ``HEAD`` request on
a FHIR route is answered as its ``GET`` without the body (status and headers, ETag included).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from starlette.responses import JSONResponse

from adapter.api.fhir_http import operation_outcome

JSON_TYPES = ("application/fhir+json", "application/json")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "xml")


def is_fhir_route(path: str) -> bool:
    """A FHIR REST route: ``/``, ``/metadata``, a resource type (``/Patient...``), or a system
    operation (``/$...``)."""
    first = path.lstrip("/").split("/", 1)[0]
    return path == "/" or first == "metadata" or first[:1].isupper() or first.startswith("$")


def negotiation_error(method: str, path: str, headers: dict[str, str], query: str) -> tuple[int, str] | None:
    """``(406 or 415, diagnostics)`` when the request asks for or sends a format this server does
    not speak, else None. ``headers``: lower-case names; ``query``: the raw query string."""
    if not is_fhir_route(path):
        return None
    view_operation = "$viewdefinition-" in path  # its _format is the operation's output format (400 there)
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "_format" and not view_operation and value.strip().lower() in XML_TYPES:
            return 406, f"_format={value}: this server answers JSON only (application/fhir+json)"
    accept = [a.split(";")[0].strip().lower() for a in headers.get("accept", "").split(",") if a.strip()]
    if accept and all(a in XML_TYPES for a in accept):
        return 406, f"Accept: {headers['accept']}: this server answers JSON only (application/fhir+json)"
    if method in ("POST", "PUT", "PATCH"):
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
        allowed = [*JSON_TYPES]
        if method == "PATCH":
            allowed.append("application/json-patch+json")
        if path.endswith("/_search"):
            allowed.append("application/x-www-form-urlencoded")
        if path.rstrip("/") == "/$ingest":
            allowed.append("multipart/form-data")
        if ctype in allowed or (not ctype and not has_body):
            return None
        sent = f"Content-Type {ctype}" if ctype else "a body without a Content-Type"
        return 415, f"{method} {path} with {sent}: this server reads {' or '.join(allowed)}"
    return None


class NegotiationMiddleware:
    """Answers :func:`negotiation_error`'s 406 and 415 with an OperationOutcome; passes anything else on."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
            found = negotiation_error(scope["method"], scope["path"], headers, (scope.get("query_string") or b"").decode("latin-1"))
            if found is not None:
                status, text = found
                code = "not-supported"
                response = JSONResponse(operation_outcome(code, text), status_code=status, media_type="application/fhir+json")
                await response(scope, receive, send)
                return
            if scope["method"] == "HEAD" and is_fhir_route(scope["path"]):
                await self.app({**scope, "method": "GET"}, receive, _without_body(send))
                return
        await self.app(scope, receive, send)


def _without_body(send: Any) -> Any:
    """``send`` passing the response start (status, headers with the GET's Content-Length) and an
    empty body: HEAD is GET without the content (RFC 9110 §9.3.2; R4 §3.1.0 lists HEAD for read)."""
    async def head_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            if not message.get("more_body"):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(message)

    return head_send
