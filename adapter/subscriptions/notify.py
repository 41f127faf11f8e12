"""Notification Bundles of the Subscriptions R5 Backport IG 1.1.0 for FHIR R4
(http://hl7.org/fhir/uv/subscriptions-backport): a Bundle of type ``history`` whose first entry is a
``Parameters`` (profile ``backport-subscription-status-r4``) with ``subscription``, ``topic``,
``status``, ``type`` (handshake | heartbeat | event-notification | query-status | query-event),
``events-since-subscription-start`` (a string in R4) and one ``notification-event`` per event
(``event-number``, ``timestamp``, ``focus``); then, by payload content, nothing (``empty``), the
focus references (``id-only``) or the resources (``full-resource``). Pure builders.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from adapter.store.db import now_instant
from adapter.subscriptions.spec import BACKPORT


@dataclass(frozen=True)
class Event:
    """One event: its number, when it was recorded, and the focus (``Type/id``, and the resource
    version for ``full-resource`` content)."""

    number: int
    timestamp: str
    focus: str
    resource: dict[str, Any] | None = None


def status_parameters(subscription_id: str, topic: str, status: str, kind: str, events_since: int,
                      events: list[Event], base: str = "") -> dict[str, Any]:
    """The ``backport-subscription-status-r4`` Parameters."""
    params: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}Subscription/{subscription_id}"}},
        {"name": "topic", "valueCanonical": topic},
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since)},
    ]
    for e in events:
        params.append({"name": "notification-event", "part": [
            {"name": "event-number", "valueString": str(e.number)},
            {"name": "timestamp", "valueInstant": e.timestamp},
            {"name": "focus", "valueReference": {"reference": f"{base}{e.focus}"}},
        ]})
    return {"resourceType": "Parameters", "id": str(uuid.uuid4()),
            "meta": {"profile": [BACKPORT + "backport-subscription-status-r4"]}, "parameter": params}


def notification_bundle(subscription_id: str, topic: str, status: str, kind: str, events_since: int,
                        events: list[Event], content: str, base: str = "") -> dict[str, Any]:
    """A ``history`` Bundle (see the module docstring). Each entry has the ``request`` and
    ``response`` that R4 requires of a history Bundle (bdl-3, bdl-4)."""
    status_res = status_parameters(subscription_id, topic, status, kind, events_since,
                                   events if content != "empty" or kind == "event-notification" else [], base)
    if content == "empty":  # the events' numbers and timestamps stay; their focus does not
        for p in status_res["parameter"]:
            if p["name"] == "notification-event":
                p["part"] = [x for x in p["part"] if x["name"] != "focus"]
    entries: list[dict[str, Any]] = [{
        "fullUrl": f"urn:uuid:{status_res['id']}", "resource": status_res,
        "request": {"method": "GET", "url": f"Subscription/{subscription_id}/$status"},
        "response": {"status": "200"}}]
    if content in ("id-only", "full-resource"):
        for e in events:
            entry: dict[str, Any] = {"fullUrl": f"{base}{e.focus}",
                                     "request": {"method": "PUT", "url": e.focus}, "response": {"status": "200"}}
            if content == "full-resource" and e.resource is not None:
                entry["resource"] = e.resource
            entries.append(entry)
    return {"resourceType": "Bundle", "id": str(uuid.uuid4()),
            "meta": {"profile": [BACKPORT + "backport-subscription-notification-r4"]},
            "type": "history", "timestamp": now_instant(), "entry": entries}
