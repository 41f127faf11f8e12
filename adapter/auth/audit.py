"""The FHIR R4 AuditEvent written for every request (FHIR R4 §6.4 AuditEvent; type ``rest`` of
http://terminology.hl7.org/CodeSystem/audit-event-type, subtype from the ``restful-interaction``
code system, outcome 0/4/8/12).

It records who (client id and role), what (the interaction, the path and the resource it names),
when, from where (the network address) and the outcome. It never records a query string (search
parameters can hold record numbers), a body, a patient name or a token.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from adapter.config import CANONICAL

INTERACTION = "http://hl7.org/fhir/restful-interaction"
_TYPED = re.compile(r"^/([A-Z][A-Za-z]{1,63})(?:/([A-Za-z0-9\-.]{1,64}))?(/.*)?$")


def classify(method: str, path: str) -> tuple[str, str, str | None]:
    """``(subtype, action, entity)`` of a request: the restful-interaction code (``read``,
    ``search-type``, ``create``, ``update``, ``delete``, ``history-instance``, ``vread``,
    ``transaction``, ``capabilities``, ``operation``), the AuditEvent action (C R U D E) and the
    ``Type/id`` or ``Type`` it concerns (``None`` when none)."""
    if path in ("/auth/token",):
        return "operation", "E", None
    if "$" in path:
        m = _TYPED.match(path)
        return "operation", "E", (f"{m.group(1)}/{m.group(2)}" if m and m.group(2) and not m.group(2).startswith("$")
                                  else m.group(1) if m else None)
    if path in ("/", ""):
        return ("transaction", "E", None) if method == "POST" else ("operation", "R", None)
    if path == "/metadata":
        return "capabilities", "R", None
    m = _TYPED.match(path)
    if not m:
        return "operation", "R" if method == "GET" else "E", None
    rtype, rid, rest = m.group(1), m.group(2), m.group(3) or ""
    entity = f"{rtype}/{rid}" if rid and rid != "_search" else rtype
    if rid == "_search" or (rid is None and method == "GET"):
        return "search-type", "E", rtype
    if rest.startswith("/_history/"):
        return "vread", "R", entity
    if rest == "/_history":
        return "history-instance", "R", entity
    return {"GET": ("read", "R"), "POST": ("create", "C"), "PUT": ("update", "U"),
            "DELETE": ("delete", "D")}.get(method, ("operation", "E")) + (entity,)  # type: ignore[return-value]


def outcome_code(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor failure (4xx), 8 serious (5xx);
    12 is kept for authentication failures (see :func:`audit_event`)."""
    return "0" if status < 400 else "4" if status < 500 else "8"


def audit_event(*, recorded: str, method: str, path: str, status: int, client_id: str | None, role: str | None,
                site: str | None, address: str | None, auth_failure: str | None = None) -> dict[str, Any]:
    """One AuditEvent (a dict, valid against the R4 schema) for one request."""
    subtype, action, entity = classify(method, path)
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP",
                             "display": "information recipient"}]},
        "who": {"identifier": {"system": f"{CANONICAL}/client", "value": client_id or "unauthenticated"}},
        "requestor": True,
    }
    if role:
        agent["role"] = [{"text": role + (f" (site {site})" if site else "")}]
    if address:
        agent["network"] = {"address": address[:100], "type": "2"}
    ev: dict[str, Any] = {
        "resourceType": "AuditEvent", "id": str(uuid.uuid4()),
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
                 "display": "RESTful Operation"},
        "subtype": [{"system": INTERACTION, "code": subtype}],
        "action": action, "recorded": recorded,
        "outcome": "12" if auth_failure else outcome_code(status),
        "outcomeDesc": f"HTTP {status}" + (f": {auth_failure}" if auth_failure else ""),
        "agent": [agent],
        "source": {"observer": {"display": "pedall-fhir-adapter"},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                             "display": "Application Server"}]},
        "entity": [{"what": {"reference": entity} if entity and "/" in entity else {"display": entity or path[:200]},
                    "description": f"{method} {path[:300]}"}],
    }
    return ev
