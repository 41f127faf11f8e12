"""HTTP pieces of the FHIR REST API (R4 §3.1.0 "RESTful API"): the media type, OperationOutcome
errors, ETags and bundles. No I/O here."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Response

FHIR_JSON = "application/fhir+json"


class FHIRResponse(Response):
    """A JSON response with media type ``application/fhir+json`` (R4 §3.1.0.1.6), serialised by orjson."""

    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class FHIRError(Exception):
    """An error answered as an OperationOutcome with an HTTP status (R4 §3.1.0.1.7 / §3.1.0.6).

    ``code`` is an IssueType code (http://hl7.org/fhir/issue-type): ``invalid``, ``not-found``,
    ``deleted``, ``conflict``, ``not-supported``, ``too-long``, ``processing``, ``exception``…"""

    def __init__(self, status: int, code: str, diagnostics: str, *, issues: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.status, self.code, self.diagnostics = status, code, diagnostics
        self.issues = issues
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.code, self.diagnostics, issues=self.issues)


def operation_outcome(code: str, diagnostics: str, severity: str = "error",
                      issues: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """An OperationOutcome with one summary issue, followed by ``issues`` when given."""
    head = {"severity": severity, "code": code, "diagnostics": diagnostics}
    return {"resourceType": "OperationOutcome", "issue": [head, *(issues or [])]}


def etag(resource: dict[str, Any]) -> str:
    """Weak ETag of a resource version: ``W/"<versionId>"`` (R4 §3.1.0.3.2)."""
    return f'W/"{resource.get("meta", {}).get("versionId", "")}"'


def parse_if_match(value: str | None) -> int | None:
    """The version in an ``If-Match`` header (``W/"3"`` or ``"3"``); ``None`` when absent.
    Raises :class:`FHIRError` (400) when it is not a version."""
    if value is None:
        return None
    v = value.strip()
    v = v[2:] if v.startswith("W/") else v
    v = v.strip('"')
    if not v.isdigit():
        raise FHIRError(400, "invalid", f"If-Match: '{value}' is not a version ETag such as W/\"3\"")
    return int(v)


def http_date(instant: str) -> str:
    """An RFC 9110 HTTP-date from a FHIR instant (for ``Last-Modified``)."""
    return format_datetime(datetime.fromisoformat(instant), usegmt=True)


def resource_headers(resource: dict[str, Any], base: str) -> dict[str, str]:
    """``ETag``, ``Last-Modified`` and ``Location`` of a stored resource version."""
    meta = resource.get("meta", {})
    h = {"ETag": etag(resource),
         "Location": f"{base}/{resource['resourceType']}/{resource['id']}/_history/{meta.get('versionId')}"}
    if meta.get("lastUpdated"):
        h["Last-Modified"] = http_date(meta["lastUpdated"])
    return h


#: Largest JSON request body (bytes) and deepest nesting the API accepts. A FHIR Bundle of our
#: resources nests about 12 levels; 64 leaves room and stops recursion bombs early.
MAX_JSON_BYTES = 20 * 1024 * 1024
MAX_JSON_DEPTH = 64


def json_depth(node: Any) -> int:
    """Nesting depth of decoded JSON (a scalar is 0), computed without recursion."""
    deepest, stack = 0, [(node, 0)]
    while stack:
        n, d = stack.pop()
        if isinstance(n, dict | list):
            d += 1
            deepest = max(deepest, d)
            stack.extend((c, d) for c in (n.values() if isinstance(n, dict) else n))
    return deepest


def parse_json_body(body: bytes) -> Any:
    """Decode a request body. Raises :class:`FHIRError`: 400 with the parser's message, 413 past
    :data:`MAX_JSON_BYTES`, 400 past :data:`MAX_JSON_DEPTH` levels of nesting."""
    if not body:
        raise FHIRError(400, "invalid", "the request body is empty; a FHIR JSON resource was expected")
    if len(body) > MAX_JSON_BYTES:
        raise FHIRError(413, "too-long", f"the JSON body is larger than the limit of {MAX_JSON_BYTES} bytes")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise FHIRError(400, "invalid", f"the request body is not valid JSON: {exc}") from None
    if json_depth(doc) > MAX_JSON_DEPTH:
        raise FHIRError(400, "invalid", f"the JSON body nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def require_resource(doc: Any, rtype: str | None = None) -> dict[str, Any]:
    """Check that ``doc`` is a resource (of ``rtype`` when given). Raises :class:`FHIRError` (400)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
        raise FHIRError(400, "invalid", "the body is not a FHIR resource: a JSON object with resourceType was expected")
    if rtype is not None and doc["resourceType"] != rtype:
        raise FHIRError(400, "invalid", f"resourceType is {doc['resourceType']!r} but the URL is for {rtype}")
    return doc


def searchset(q: Any, result: Any, snapshot: str, base: str) -> dict[str, Any]:
    """A searchset Bundle for a parsed search ``q`` (adapter/search/query.py ``Query``) and its
    ``result`` (adapter/store/search.py ``SearchResult``) as of ``snapshot``: ``total``, self/next/
    previous links that keep the snapshot (R4 §3.1.1.6 paging), entries subsetted as ``_summary``
    / ``_elements`` ask (adapter/api/subsetting.py)."""
    from adapter.api.subsetting import subset

    params = list(q.params)
    for s in [f"{'-' if d else ''}{n}" for n, d in q.sort]:
        params.append(("_sort", s))
    for inc in q.include:
        params.append(("_include", f"{inc.source}:{inc.param}" + (f":{inc.target}" if inc.target else "")))
    for inc in q.revinclude:
        params.append(("_revinclude", f"{inc.source}:{inc.param}" + (f":{inc.target}" if inc.target else "")))
    if q.summary_count:
        params.append(("_summary", "count"))
    if q.summary:
        params.append(("_summary", q.summary))
    if q.elements:
        params.append(("_elements", ",".join(q.elements)))

    def link(offset: int) -> str:
        extra = [("_count", str(q.count)), ("_snapshot", snapshot), ("_offset", str(offset))]
        return f"{base}/{q.type}?{urlencode(params + extra)}"

    links = [{"relation": "self", "url": link(q.offset)}]
    if not q.summary_count and q.count and q.offset + q.count < result.total:
        links.append({"relation": "next", "url": link(q.offset + q.count)})
    if not q.summary_count and q.offset > 0:
        links.append({"relation": "previous", "url": link(max(0, q.offset - q.count))})
    summary, elements = getattr(q, "summary", None), getattr(q, "elements", None)
    entries = [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": subset(r, summary, elements),
                "search": {"mode": "match"}} for r in result.matches]
    entries += [{"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": subset(r, summary, None),
                 "search": {"mode": "include"}} for r in result.included]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": result.total, "link": links}
    if entries:
        bundle["entry"] = entries
    return bundle
