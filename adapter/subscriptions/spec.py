"""FHIR R4 Subscription resources (R4 §8.x Subscription, channel ``rest-hook``): what a stored
Subscription asks for, checked when it is written. Pure: no I/O.

- ``criteria`` is ``Type?search`` with the search parameters of our FHIR API (any other is
  refused); result parameters (``_count``, ``_include``…) are refused.
- ``channel.type`` must be ``rest-hook``; ``channel.endpoint`` an http(s) URL; ``channel.header``
  entries ``Name: value``; ``channel.payload`` absent (notify only: ``POST`` with no body) or
  ``application/fhir+json`` (the resource is sent, ``PUT [endpoint]/[type]/[id]``, R4 §8.x.4.2).
- Delivery security: a payload with the resource goes only to ``https`` endpoints, or to a loopback
  host in development mode; outside development mode every endpoint must start with one of the
  ``subscription_endpoint_allowlist`` prefixes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from adapter.search.query import RESULT_PARAMS, Query, SearchError, parse

#: Statuses for which events are recorded (an ``error`` subscription keeps collecting them, so that
#: nothing is lost; ``off`` collects none).
COLLECTING = ("requested", "active", "error")
#: Statuses for which events are delivered.
DELIVERING = ("requested", "active")


class SubscriptionError(ValueError):
    """A Subscription asks for something this server cannot do (answered 422 with an OperationOutcome)."""


@dataclass(frozen=True)
class SubscriptionSpec:
    """A stored Subscription, parsed: ``query`` is the criteria as a search on ``query.type``."""

    id: str
    status: str
    query: Query
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    full_resource: bool


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_subscription(resource: dict[str, Any], *, development: bool = True,
                       allowlist: tuple[str, ...] = ()) -> SubscriptionSpec:
    """Parse and check a Subscription (see the module docstring). Raises SubscriptionError."""
    channel = resource.get("channel") or {}
    if channel.get("type") != "rest-hook":
        raise SubscriptionError(f"channel.type '{channel.get('type')}' is not supported; use rest-hook")
    criteria = resource.get("criteria") or ""
    rtype, _, q = criteria.partition("?")
    items = parse_qsl(q, keep_blank_values=True)
    if any(k.split(":")[0] in RESULT_PARAMS for k, _ in items):
        raise SubscriptionError(f"criteria: result parameters ({', '.join(RESULT_PARAMS)}) are not allowed")
    try:
        query = parse(rtype, items)
    except SearchError as exc:
        raise SubscriptionError(f"criteria: {exc}") from None
    endpoint = channel.get("endpoint") or ""
    url = urlsplit(endpoint)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SubscriptionError(f"channel.endpoint '{endpoint[:80]}' is not an http(s) URL")
    payload = channel.get("payload")
    if payload not in (None, "application/fhir+json"):
        raise SubscriptionError(f"channel.payload '{str(payload)[:40]}' is not supported; leave it out or use application/fhir+json")
    loop = _loopback(url.hostname)
    if payload and url.scheme != "https" and not (development and loop):
        raise SubscriptionError("a payload with the resource is sent only to https endpoints "
                                "(or to a loopback host in development mode)")
    if not development and not any(endpoint.startswith(a) for a in allowlist):
        raise SubscriptionError("channel.endpoint is not on this server's allow-list of subscription endpoints")
    headers = []
    for h in channel.get("header") or []:
        name, sep, value = str(h).partition(":")
        if not sep or not name.strip() or any(c in name for c in " \r\n") or any(c in value for c in "\r\n"):
            raise SubscriptionError("channel.header entries must be 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return SubscriptionSpec(resource.get("id", ""), resource.get("status", ""), query, endpoint, tuple(headers),
                            payload is not None)
