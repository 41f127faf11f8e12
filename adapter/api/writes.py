"""Writes through the REST API: create, update, delete, and transaction/batch Bundles.

Rules: FHIR R4 §3.1.0.4 (update), §3.1.0.5 (version-aware updates, ``If-Match``), §3.1.0.7 (delete),
§3.1.0.8 (create, conditional create ``If-None-Exist``), §3.1.0.4.3 (conditional update), §3.1.0.11
(batch/transaction: processing order DELETE, POST, PUT, GET; ``urn:uuid`` fullUrls resolved to the
ids assigned; a transaction is atomic). Every resource written passes the three validators
(R4 schema, R4B model, our profiles) first.

Conditional creates and updates take a lock on their resource type (PostgreSQL advisory lock;
SQLite write transactions are serialised), so concurrent conditional creates that the new resource
would all match leave exactly one resource, however their criteria are spelled (HAPI's
hapi-fhir#3141). Writes of one resource queue on its row (``Transaction.put``), so concurrent
``If-Match`` updates give one winner and 412 for the rest, never a duplicate version.

Write confinement (a client bound to a site): every literal reference a written resource sets
(``subject``, ``patient``, ``focus``, ``partOf``, ``basedOn``… anywhere in the resource, extensions
included) must resolve, when the transaction ends, to a current resource of the client's site or to
a network-wide one (the study, its Groups); a reference to another site's resource, or to one of a
type stored here that does not exist, is refused with 403 and the same message either way, so the
answer reveals nothing about other sites. References to types this server does not store, contained
(``#id``) and absolute references are not resolved here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

import orjson

from adapter.api.fhir_http import FHIRError, operation_outcome, require_resource
from adapter.search.params import PARAMS
from adapter.search.query import CONTROL, SearchError, parse
from adapter.store import Store
from adapter.store.db import SHARED_SITES, OutsideSite, Transaction, VersionConflict
from adapter.validation import Validator

ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
EVERYTHING = "9999-12-31T23:59:59.999999"


@dataclass
class Written:
    """The result of one write: HTTP status, the stored resource (``None`` after a delete)."""

    status: int
    resource: dict[str, Any] | None
    location: str | None = None


def check_id(rid: str) -> str:
    if not ID.match(rid):
        raise FHIRError(400, "invalid", f"'{rid}' is not a valid FHIR id ([A-Za-z0-9-.]{{1,64}})")
    return rid


def walk(node: Any, path: str, contained: bool = True) -> Iterator[tuple[str, str, Any]]:
    """``(element path, element name, value)`` for every element and list item below ``node`` (a
    list item carries its list's name), depth first; ``contained=False`` leaves out contained
    resources."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "contained" and not contained:
                continue
            if isinstance(v, list):
                for i, item in enumerate(v):
                    yield f"{path}.{k}[{i}]", str(k), item
                    yield from walk(item, f"{path}.{k}[{i}]", contained)
            else:
                yield f"{path}.{k}", str(k), v
                yield from walk(v, f"{path}.{k}", contained)


def control_character(resource: dict[str, Any]) -> str | None:
    """The path of the first string (or element name) holding a control character (U+0000-U+001F
    but tab, CR and LF; FHIR R4 §2.24.0.1 string, and XML 1.0 cannot carry them), or ``None``."""
    for where, name, value in walk(resource, str(resource.get("resourceType"))):
        if CONTROL.search(name):
            return f"{where.rsplit('.', 1)[0]} (an element name)"
        if isinstance(value, str) and CONTROL.search(value):
            return where
    return None


_TYPED_REF = re.compile(r"^([A-Z][A-Za-z]{1,63})/([^/]*)(?:/_history/[^/]*)?$")


def malformed_reference(resource: dict[str, Any]) -> str | None:
    r"""``"<path>: <reference>"`` of the first relative literal reference ``Type/id`` to an R4
    resource type whose id is not a FHIR id (R4 §2.24.0.1 id: ``[A-Za-z0-9\-.]{1,64}``), which no
    resource can have; ``None`` when every reference is well formed."""
    for where, name, value in walk(resource, str(resource.get("resourceType")), contained=False):
        if name == "reference" and isinstance(value, str):
            m = _TYPED_REF.match(value)
            if m and m.group(1) in _r4_types() and not ID.match(m.group(2)):
                return f"{where.rsplit('.', 1)[0]}: '{value[:80]}'"
    return None


@lru_cache(maxsize=1)
def _r4_types() -> frozenset[str]:
    """Every R4 resource type (the official schema's discriminator mapping)."""
    from adapter.config import get_settings

    schema = orjson.loads(get_settings().fhir_schema_path.read_bytes())
    return frozenset(schema["discriminator"]["mapping"])


def validate(validator: Validator, resource: dict[str, Any], settings: Any = None) -> None:
    """Raise :class:`FHIRError` (422, ``processing``) listing every validation finding; a
    Subscription is also checked against the endpoint policy of ``settings`` (the service's;
    default: the process settings). A string holding a control character is refused with 400
    naming the element (nothing of it is stored)."""
    bad = control_character(resource)
    if bad:
        raise FHIRError(400, "invalid", f"{bad}: the value holds a control character (U+0000-U+001F other than tab, "
                        "CR and LF), which no FHIR string may hold")
    bad = malformed_reference(resource)
    if bad:
        raise FHIRError(400, "invalid", f"{bad} is not a valid literal reference: the id after the type is not a FHIR "
                        "id ([A-Za-z0-9-.]{1,64})")
    issues = validator.validate(resource, full=True, reference=False)  # every write: model in full, schema on jsonschema-rs
    if issues:
        raise FHIRError(422, "processing", f"{resource.get('resourceType')} failed validation ({len(issues)} issue(s))",
                        issues=[i.to_operation_outcome_issue() for i in issues])
    if resource.get("resourceType") == "Subscription":
        from adapter.config import get_settings
        from adapter.subscriptions.spec import SubscriptionError, parse_subscription

        s = settings or get_settings()
        try:
            parse_subscription(resource, development=s.env == "development",
                               allowlist=tuple(s.subscription_endpoint_allowlist))
        except SubscriptionError as exc:
            raise FHIRError(422, "not-supported", f"Subscription: {exc}") from None


def _site_of(tx: Transaction, resource: dict[str, Any]) -> str:
    """The site (compartment owner) of a new resource written through the API. For a client bound
    to a site, that site (its references are then checked to stay in it, :func:`check_site_references`;
    a Subscription is confined to it, adapter/store/outbox.py). For an unbound principal: for a
    Patient, its managing Organization when that is a site's Organization; for other resources,
    the site of the Patient they are about; otherwise empty (no site)."""
    if tx.site_scope is not None:
        return tx.site_scope
    if resource["resourceType"] == "Subscription":
        return ""
    if resource["resourceType"] == "Patient":
        ref = (resource.get("managingOrganization") or {}).get("reference", "")
        if ref.startswith("Organization/"):
            cur = tx.current("Organization", ref.split("/")[1])
            if cur is not None and cur[2] == ref.split("/")[1]:
                return cur[2]
        return ""
    subject = resource.get("subject") or resource.get("patient") or {}
    ref = subject.get("reference", "") if isinstance(subject, dict) else ""
    if ref.startswith("Patient/"):
        cur = tx.current("Patient", ref.split("/")[1])
        if cur is not None:
            return cur[2]
    return ""


def _subscription_owner(tx: Transaction, resource: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """For a Subscription written through the API: refuse (403) criteria on a type the writer may
    not read (a notification carries the resource, or at least its id); return the resource with
    its ``channel.header`` values masked and the owner to record with the headers (adapter/store/
    outbox.py). Other resources pass unchanged (owner ``None``)."""
    if resource.get("resourceType") != "Subscription" or tx.principal is None:
        return resource, None
    from adapter.store.outbox import SubscriptionOwner, owner_of, split_headers
    from adapter.subscriptions.spec import criteria_type

    who = tx.principal
    rtype = criteria_type(resource)
    if not who.allows("read", rtype if rtype in PARAMS else "*"):
        raise FHIRError(403, "forbidden", f"a Subscription on {rtype[:64] or '(no type)'} needs read access to it; "
                        f"the {who.role} role or the token's scopes do not allow that")
    stored = owner_of(tx.conn, resource["id"])
    masked, headers = split_headers(resource, stored.headers if stored is not None else ())
    return masked, SubscriptionOwner(who.client_id, who.role, who.site, tuple(who.scopes), headers)


def _put(tx: Transaction, resource: dict[str, Any], if_match: int | None) -> Any:
    """``tx.put`` with the store's refusals as HTTP errors: 412 (version conflict), 404 (another
    site's resource, for a site-bound client), 403 (a new resource outside the client's site)."""
    try:
        resource, owner = _subscription_owner(tx, resource)
        out = tx.put(resource, _site_of(tx, resource), if_match=if_match)
        if owner is not None:
            from adapter.store.outbox import record_owner

            record_owner(tx.conn, resource["id"], owner)
        if tx.site_scope is not None:
            tx.written_by_site.append(resource)
        return out
    except VersionConflict as exc:
        raise FHIRError(412, "conflict", str(exc)) from None
    except OutsideSite as exc:
        raise FHIRError(403 if exc.found else 404, "forbidden" if exc.found else "not-found", str(exc)) from None


_LOCAL_REF = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def local_references(resource: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(element path, type, id)`` of every literal relative reference (``Type/id``, optionally
    versioned) anywhere in a resource but its contained resources (FHIR R4 §2.3.0 "Reference":
    ``Reference.reference``)."""
    for where, name, value in walk(resource, str(resource.get("resourceType")), contained=False):
        if name == "reference" and isinstance(value, str):
            m = _LOCAL_REF.match(value)
            if m:
                yield where.rsplit(".", 1)[0], m.group(1), m.group(2)


def check_site_references(tx: Transaction) -> None:
    """Refuse (403) a site-bound client's write whose references leave its site (see the module
    docstring); checked once per transaction, after every entry is written, so a transaction may
    reference what it creates in any order. Does nothing for an unbound principal."""
    if tx.site_scope is None or not tx.written_by_site:
        return
    refs = [(r["resourceType"], where, t, i) for r in tx.written_by_site
            for where, t, i in local_references(r) if t in PARAMS]
    sites = tx.sites_of({(t, i) for _, _, t, i in refs})
    for _rtype, where, t, i in refs:
        site = sites.get((t, i))
        if site is None or (site != tx.site_scope and site not in SHARED_SITES):
            raise FHIRError(403, "forbidden", f"{where}: {t}/{i} is not a resource of site {tx.site_scope}; "
                            "a site's client may only reference its own site's resources")


def _read_back(tx: Transaction, rtype: str, rid: str) -> dict[str, Any]:
    from sqlalchemy import select

    from adapter.store.schema import resources

    text = tx.conn.execute(select(resources.c.resource).where(resources.c.type == rtype, resources.c.id == rid)).scalar_one()
    return orjson.loads(text)


def _conditional(tx: Transaction, rtype: str, query: str) -> list[dict[str, Any]]:
    """Resources of ``rtype`` matching a conditional query (``identifier=sys|123``), under a lock on
    the query. Raises :class:`FHIRError` (400) for a query that is not a supported search."""
    items = parse_qsl(query, keep_blank_values=True)
    if not items:
        raise FHIRError(400, "invalid", f"the conditional query '{query}' is empty")
    try:
        q = parse(rtype, items)
    except SearchError as exc:
        raise FHIRError(400, "invalid", f"conditional query: {exc}") from None
    q.count = 2
    # one lock per type, not per query: two spellings of criteria that the same new resource would
    # both match (identifier=x, identifier=x&gender=female) must not both find nothing and create
    tx.lock(f"conditional:{rtype}")
    return tx.search(q, snapshot=EVERYTHING).matches


_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]{1,63})\?(.+)$", re.S)


def resolve_conditional_references(tx: Transaction, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with every conditional reference (``Reference.reference`` = ``Type?query``,
    e.g. ``Patient?identifier=sys|123``) replaced by the literal reference ``Type/id`` of the one
    resource the search matches (FHIR R4 §3.1.0.11.2 "Conditional references"; R4 defines them in
    transactions, this server also resolves them in batches and in a single create or update, as
    R5 §3.2.0.8 and HAPI FHIR do). The search runs inside ``tx``, so it sees what earlier entries of
    a transaction wrote, and a site-bound client's search sees its own site only.

    Raises :class:`FHIRError` 400 (``not-found``) when nothing matches, 412 (``multiple-matches``)
    when several do, 400 (``invalid``/``not-supported``) for a query that is not a supported search
    or a type not held here; each names the element path and the reference."""
    found: dict[str, str] = {}
    for where, name, value in walk(resource, str(resource.get("resourceType"))):
        if name != "reference" or not isinstance(value, str) or value in found:
            continue
        m = _CONDITIONAL_REF.match(value)
        if not m:
            continue
        rtype, query = m.groups()
        path = where.rsplit(".", 1)[0]
        if rtype not in PARAMS:
            raise FHIRError(400, "not-supported", f"{path}: conditional reference '{value[:80]}': resource type "
                            f"'{rtype}' is not held by this server")
        try:
            q = parse(rtype, parse_qsl(query, keep_blank_values=True))
        except SearchError as exc:
            raise FHIRError(400, "invalid", f"{path}: conditional reference '{value[:80]}': {exc}") from None
        q.count = 2
        matches = tx.search(q, snapshot=EVERYTHING).matches
        if not matches:
            raise FHIRError(400, "not-found", f"{path}: conditional reference '{value[:80]}' matches no {rtype}; "
                            "it must match exactly one (R4 3.1.0.11.2)")
        if len(matches) > 1:
            raise FHIRError(412, "multiple-matches", f"{path}: conditional reference '{value[:80]}' matches more "
                            f"than one {rtype}; it must match exactly one (R4 3.1.0.11.2)")
        found[value] = f"{rtype}/{matches[0]['id']}"
    return _rewrite(resource, found) if found else resource


def create(tx: Transaction, validator: Validator, resource: dict[str, Any], if_none_exist: str | None = None,
           rid: str | None = None) -> Written:
    """Create with a server-assigned id (``rid``, or a new UUID; a client id is replaced, R4 §3.1.0.8).
    With ``if_none_exist``, return the one existing match instead (200), or fail with 412 when
    several match."""
    rtype = resource["resourceType"]
    if if_none_exist:
        found = _conditional(tx, rtype, if_none_exist)
        if len(found) > 1:
            raise FHIRError(412, "duplicate", f"If-None-Exist '{if_none_exist}' matches more than one {rtype}")
        if found:
            return Written(200, found[0])
    resource = {**resolve_conditional_references(tx, resource), "id": rid or str(uuid.uuid4())}
    validate(validator, resource, tx.settings)
    resource = validator.with_profile(resource)  # a plain resource is stored declaring the profile it passed
    _put(tx, resource, None)
    return Written(201, _read_back(tx, rtype, resource["id"]))


def update(tx: Transaction, validator: Validator, rtype: str, rid: str, resource: dict[str, Any],
           if_match: int | None = None) -> Written:
    """Update or create ``rtype/rid`` (200 updated or unchanged, 201 created). Raises
    :class:`FHIRError` 400 when the body's id differs from the URL, 412 on a version conflict."""
    check_id(rid)
    if resource.get("id") != rid:
        raise FHIRError(400, "invalid", f"the resource id {resource.get('id')!r} does not match the URL id {rid!r}")
    resource = resolve_conditional_references(tx, resource)
    validate(validator, resource, tx.settings)
    resource = validator.with_profile(resource)  # a plain resource is stored declaring the profile it passed
    out = _put(tx, dict(resource), if_match)
    return Written(201 if out.outcome == "created" else 200, _read_back(tx, rtype, rid))


def conditional_update(tx: Transaction, validator: Validator, rtype: str, query: str, resource: dict[str, Any]) -> Written:
    """``PUT Type?query`` (R4 §3.1.0.4.3): no match → create (with the body's id, or a new one);
    one match → update it; several → 412."""
    found = _conditional(tx, rtype, query)
    if len(found) > 1:
        raise FHIRError(412, "duplicate", f"conditional update '{query}' matches more than one {rtype}")
    if found:
        rid = found[0]["id"]
        if resource.get("id") not in (None, rid):
            raise FHIRError(400, "invalid", f"the body's id {resource.get('id')!r} is not the matching resource's id")
    else:
        rid = resource.get("id") or str(uuid.uuid4())
    return update(tx, validator, rtype, check_id(rid), {**resource, "id": rid})


def delete(tx: Transaction, rtype: str, rid: str, if_match: int | None = None) -> Written:
    """Delete (204 whether or not it existed, R4 §3.1.0.7); 412 on a version conflict."""
    try:
        tx.delete(rtype, check_id(rid), if_match=if_match)
    except VersionConflict as exc:
        raise FHIRError(412, "conflict", str(exc)) from None
    return Written(204, None)


# ------------------------------------------------------------------------------ batch / transaction

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "reference" and isinstance(v, str) and v in ids:
                out[k] = ids[v]
            else:
                out[k] = _rewrite(v, ids)
        return out
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def _entry_request(i: int, entry: Any) -> tuple[str, str, dict[str, Any]]:
    """``(method, url without a leading slash, request)`` of a Bundle entry. Raises
    :class:`FHIRError` 400 for a request R4 §3.1.0.11 does not allow: no method or url, a resource
    type this server does not hold, a POST url that is not a bare type, a non-string ``ifMatch``
    or ``ifNoneExist``."""
    where = f"Bundle.entry[{i}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FHIRError(400, "invalid", f"{where}: request (method and url) is required")
    req = entry["request"]
    method, url = req.get("method"), req.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise FHIRError(400, "invalid", f"{where}.request: method must be one of {', '.join(_ORDER)} with a url")
    for name in ("ifMatch", "ifNoneExist", "ifNoneMatch", "ifModifiedSince"):
        if name in req and not isinstance(req[name], str):
            raise FHIRError(400, "invalid", f"{where}.request.{name} must be a string")
    url = url.lstrip("/")
    path, _, query = url.partition("?")
    rtype = path.split("/")[0]
    if rtype not in PARAMS:
        raise FHIRError(400, "not-supported", f"{where}.request.url: resource type '{rtype[:64]}' is not held by this "
                        f"server (held: {', '.join(sorted(PARAMS))})")
    if method == "POST" and (query or "/" in path):
        raise FHIRError(400, "invalid", f"{where}.request.url: a POST (create) url is the resource type alone, not "
                        f"'{url[:80]}' (conditions go in ifNoneExist)")
    return method, url, req


_OP = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete", "GET": "read", "HEAD": "read"}


def _run_entry(tx: Transaction, validator: Validator, i: int, entry: dict[str, Any], method: str, url: str,
               req: dict[str, Any], ids: dict[str, str], allow: Any = None, base: str = "") -> Written:
    path, _, query = url.partition("?")
    parts = path.split("/")
    rtype = parts[0]
    where = f"Bundle.entry[{i}]"
    try:
        if method == "GET" and (query or len(parts) == 1):
            return _search_entry(tx, rtype, query, allow, base)
        if allow is not None:
            allow(_OP[method], rtype)
        if method in ("POST", "PUT"):
            res = require_resource(entry.get("resource"), rtype)
            res = _rewrite(res, ids)
            if method == "POST":
                if len(parts) != 1:
                    raise FHIRError(400, "invalid", f"{where}: POST url must be a resource type, not '{url}'")
                return create(tx, validator, res, req.get("ifNoneExist"))
            if query:
                return conditional_update(tx, validator, rtype, query, res)
            if len(parts) != 2:
                raise FHIRError(400, "invalid", f"{where}: PUT url must be Type/id or Type?query, not '{url}'")
            if_match = _if_match(req.get("ifMatch"))
            return update(tx, validator, rtype, parts[1], res, if_match)
        if method == "DELETE":
            if len(parts) != 2:
                raise FHIRError(400, "invalid", f"{where}: DELETE url must be Type/id, not '{url}'")
            return delete(tx, rtype, parts[1], _if_match(req.get("ifMatch")))
        if method == "GET" and len(parts) == 2 and not query:
            cur = tx.current(rtype, parts[1])
            if cur is None or cur[1]:
                raise FHIRError(404, "not-found", f"{rtype}/{parts[1]} is not known")
            return Written(200, _read_back(tx, rtype, parts[1]))
        raise FHIRError(400, "not-supported", f"{where}: {method} {url} is not supported in a Bundle")
    except FHIRError as exc:
        exc.diagnostics = exc.diagnostics if exc.diagnostics.startswith(where) else f"{where}: {exc.diagnostics}"
        raise


def _search_entry(tx: Transaction, rtype: str, query: str, allow: Any, base: str) -> Written:
    """A search in a batch or transaction entry (``GET Type?query``; R4 §3.1.0.11: a GET entry is
    any read or search): its searchset Bundle, run inside ``tx`` (so it sees what the transaction's
    earlier entries wrote) and confined to a site-bound client's site. Raises :class:`FHIRError`
    400 for a bad search, 403 for a type (searched or included) the client may not read."""
    from adapter.api.fhir_http import searchset
    from adapter.store.db import now_instant

    if allow is not None:
        allow("search", rtype)
    try:
        q = parse(rtype, parse_qsl(query, keep_blank_values=True), base=base or None)
    except SearchError as exc:
        raise FHIRError(400, "invalid", str(exc)) from None
    if allow is not None:
        for t in [*(inc.target for inc in q.include if inc.target), *(inc.source for inc in q.revinclude)]:
            allow("read", t)
    snapshot = now_instant()
    result = tx.search(q, snapshot)
    if allow is not None and q.include:  # an _include without a target type: only readable types
        kept = []
        for r in result.included:
            try:
                allow("read", r["resourceType"])
                kept.append(r)
            except FHIRError:
                continue
        result.included = kept
    return Written(200, searchset(q, result, snapshot, base))


def _if_match(v: Any) -> int | None:
    from adapter.api.fhir_http import parse_if_match

    return parse_if_match(v) if isinstance(v, str) else None


_STATUS = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def _response_entry(w: Written, base: str) -> dict[str, Any]:
    resp: dict[str, Any] = {"status": _STATUS.get(w.status, str(w.status))}
    entry: dict[str, Any] = {"response": resp}
    if w.resource is not None and w.resource.get("type") == "searchset" and w.resource["resourceType"] == "Bundle":
        entry["resource"] = w.resource  # a search's answer: the searchset Bundle itself
        return entry
    if w.resource is not None:
        meta = w.resource.get("meta", {})
        entry["fullUrl"] = f"{base}/{w.resource['resourceType']}/{w.resource['id']}"
        entry["resource"] = w.resource
        resp["location"] = f"{w.resource['resourceType']}/{w.resource['id']}/_history/{meta.get('versionId')}"
        resp["etag"] = f'W/"{meta.get("versionId")}"'
        resp["lastModified"] = meta.get("lastUpdated")
    return entry


def process_bundle(store: Store, validator: Validator, bundle: dict[str, Any], base: str, *,
                   allow: Any = None, site: str | None = None, principal: Any = None,
                   settings: Any = None) -> dict[str, Any]:
    """Run a ``transaction`` (atomic: all entries or none) or ``batch`` (each entry on its own) Bundle
    and return the ``transaction-response`` / ``batch-response`` Bundle, entries in request order.
    Raises :class:`FHIRError` for a transaction entry that fails (nothing is written).

    ``allow(op, type)`` raises :class:`FHIRError` (403) for an entry the client may not run; ``site``
    confines every entry to one site (adapter/store/db.py ``Transaction``). In a transaction one
    refused entry fails the whole Bundle. ``principal``: who writes (a Subscription records it as
    its owner)."""
    btype = bundle.get("type")
    entries = bundle.get("entry") or []
    if btype not in ("transaction", "batch"):
        raise FHIRError(400, "invalid", f"POST / takes a transaction or batch Bundle, not type {btype!r}")
    if not isinstance(entries, list):
        raise FHIRError(400, "invalid", "Bundle.entry must be an array")
    if btype == "transaction":
        parsed = [_entry_request(i, e) for i, e in enumerate(entries)]

        def work(tx: Transaction) -> dict[str, Any]:
            tx.principal, tx.settings = principal, settings
            return _transaction(tx, validator, entries, parsed, base, allow)

        return store.run(work, site=site)  # type: ignore[return-value]
    results: list[dict[str, Any] | None] = [None] * len(entries)
    for i, e in enumerate(entries):
        try:  # a batch entry fails on its own (R4 §3.1.0.11.1)
            method, url, req = _entry_request(i, e)
        except FHIRError as exc:
            results[i] = {"response": {"status": str(exc.status), "outcome": exc.outcome()}}
            continue

        def one(tx: Transaction, i: int = i, e: dict[str, Any] = e, method: str = method, url: str = url,
                req: dict[str, Any] = req) -> Written:
            tx.principal, tx.settings = principal, settings
            w = _run_entry(tx, validator, i, e, method, url, req, {}, allow, base)
            check_site_references(tx)
            return w

        try:
            results[i] = _response_entry(store.run(one, site=site), base)  # type: ignore[arg-type]
        except FHIRError as exc:
            results[i] = {"response": {"status": str(exc.status), "outcome": exc.outcome()}}
    return {"resourceType": "Bundle", "type": "batch-response", "entry": results}


def _transaction(tx: Transaction, validator: Validator, entries: list[Any], parsed: list[tuple[str, str, dict[str, Any]]],
                 base: str, allow: Any) -> dict[str, Any]:
    """The entries of a transaction Bundle, run in ``tx`` (R4 §3.1.0.11.2 processing order);
    returns the ``transaction-response`` Bundle. Run again from the start when the store retries."""
    results: list[dict[str, Any] | None] = [None] * len(entries)
    ids: dict[str, str] = {}
    for i, e in enumerate(entries):  # urn:uuid fullUrls of creates get their ids up front
        full = e.get("fullUrl")
        if parsed[i][0] == "POST" and isinstance(full, str) and full.startswith("urn:uuid:"):
            ids[full] = f"{parsed[i][1].split('?')[0]}/{uuid.uuid4()}"

    # DELETE, then conditional creates (their match may replace a promised id), POST, PUT, GET
    def order(k: int) -> tuple[int, int]:
        method, _, req = parsed[k]
        return (_ORDER[method], 0 if method == "POST" and req.get("ifNoneExist") else 1)

    written: dict[str, int] = {}  # Type/id -> the entry that wrote it (R4: each resource once)
    for i in sorted(range(len(entries)), key=order):
        method, url, req = parsed[i]
        entry = entries[i]
        full = entry.get("fullUrl")
        if method == "POST" and full in ids:  # create with the id promised to references
            try:
                if allow is not None:
                    allow("create", url.split("?")[0])
                res = _rewrite(require_resource(entry.get("resource"), url.split("?")[0]), ids)
                w = create(tx, validator, res, req.get("ifNoneExist"), rid=ids[full].split("/")[1])
            except FHIRError as exc:
                exc.diagnostics = f"Bundle.entry[{i}]: {exc.diagnostics}"
                raise
            if w.status == 200 and w.resource is not None:  # an existing match stands in for it
                ids[full] = f"{w.resource['resourceType']}/{w.resource['id']}"
        else:
            w = _run_entry(tx, validator, i, entry, method, url, req, ids, allow, base)
        if method != "GET":
            key = (f"{w.resource['resourceType']}/{w.resource['id']}" if w.resource is not None
                   else url.split("?")[0] if "?" not in url else None)
            if key is not None and key in written:
                # R4 §3.1.0.11.2: "If any resource identities (including resolved identities from
                # conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail."
                raise FHIRError(400, "invalid", f"Bundle.entry[{written[key]}] and Bundle.entry[{i}] both write {key}: a "
                                "transaction writes each resource once (R4 3.1.0.11.2); nothing was stored")
            if key is not None:
                written[key] = i
        results[i] = _response_entry(w, base)
    check_site_references(tx)
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": results}


__all__ = ["Written", "check_site_references", "resolve_conditional_references", "create", "update", "conditional_update", "delete", "process_bundle",
           "operation_outcome"]
