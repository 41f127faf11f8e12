"""FHIR R4 Subscription resources (R4 §8.x Subscription, channel ``rest-hook``): what a stored
Subscription asks for, checked when it is written. Pure: no I/O.

- ``criteria`` is ``Type?search`` with the search parameters of our FHIR API (any other is
  refused); result parameters (``_count``, ``_include``…) are refused.
- ``channel.type`` must be ``rest-hook``; ``channel.endpoint`` an http(s) URL; ``channel.header``
  entries ``Name: value``; ``channel.payload`` absent (notify only: ``POST`` with no body) or
  ``application/fhir+json`` (the resource is sent, ``PUT [endpoint]/[type]/[id]``, R4 §8.x.4.2).
- Delivery security: a payload with the resource goes only to ``https`` endpoints, or to a loopback
  host in development mode; outside development mode every endpoint must match an entry of the
  ``subscription_endpoint_allowlist`` (:func:`endpoint_allowed`: the URLs are parsed, never compared
  as strings). An endpoint with user information (``https://user@host/``), dot segments or encoded
  separators in its path is refused everywhere. Redirects are never followed (delivery.py).
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


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
#: Our SubscriptionTopic (Backport IG 1.1.0): an MRD result (pedall-mrd Observation) is created or
#: updated. Filters (``backport-filter-criteria``) may use any Observation search parameter, e.g.
#: ``patient`` and ``interpretation``.
MRD_TOPIC = "https://w3id.org/pedall-fhir/SubscriptionTopic/mrd-result"
MRD_CODE = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"
CONTENTS = ("empty", "id-only", "full-resource")


@dataclass(frozen=True)
class SubscriptionSpec:
    """A stored Subscription, parsed: ``query`` is the criteria as a search on ``query.type``.

    For a Backport IG subscription (``topic`` set): ``content`` is the payload content (``empty``,
    ``id-only``, ``full-resource``), ``heartbeat`` the heartbeat period and ``timeout`` the delivery
    timeout in seconds (``None``: not asked for)."""

    id: str
    status: str
    query: Query
    endpoint: str
    headers: tuple[tuple[str, str], ...]
    full_resource: bool
    topic: str | None = None
    content: str = "empty"
    heartbeat: int | None = None
    timeout: int | None = None


def _ext(node: dict[str, Any] | None, name: str) -> Any:
    for e in (node or {}).get("extension") or []:
        if e.get("url") == BACKPORT + name:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def _backport(resource: dict[str, Any]) -> tuple[str, str, str, int | None, int | None]:
    """(topic, filter query string, payload content, heartbeat, timeout) of a Backport subscription."""
    topic = resource.get("criteria") or ""
    if topic != MRD_TOPIC:
        raise SubscriptionError(f"topic '{topic[:80]}' is not known here; the topic is {MRD_TOPIC}")
    filters = [e.get("valueString", "") for e in (resource.get("_criteria") or {}).get("extension") or []
               if e.get("url") == BACKPORT + "backport-filter-criteria"]
    q = f"code={MRD_CODE}"
    for f in filters:
        rtype, _, rest = f.partition("?")
        if rtype not in ("Observation", ""):
            raise SubscriptionError(f"backport-filter-criteria '{f[:80]}' must filter Observation")
        q += "&" + rest if rest else ""
    channel = resource.get("channel") or {}
    content = _ext(channel.get("_payload"), "backport-payload-content") or "id-only"
    if content not in CONTENTS:
        raise SubscriptionError(f"backport-payload-content '{content}' is not one of {', '.join(CONTENTS)}")
    heartbeat = _ext(channel, "backport-heartbeat-period")
    timeout = _ext(channel, "backport-timeout")
    for name, v in (("heartbeat-period", heartbeat), ("timeout", timeout)):
        if v is not None and (not isinstance(v, int) or v < 1):
            raise SubscriptionError(f"backport-{name} must be a positive number of seconds")
    return topic, q, content, heartbeat, timeout


_DEFAULT_PORT = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Endpoint:
    """An http(s) URL split for comparison (RFC 3986 §6.2.2-6.2.3 normalisation): scheme and host
    lower-cased, the port made explicit, the path as its segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]


def parse_endpoint(url: str) -> Endpoint:
    r"""Parse an endpoint or allow-list entry. Raises SubscriptionError for anything but a plain
    http(s) URL: user information (``user@``, which makes ``https://ehr.example@127.0.0.1/`` go to
    127.0.0.1), a backslash, a dot segment (``/hook/../admin``) or an encoded ``.``, ``/`` or ``\``
    in the path, a malformed port."""
    u = urlsplit(url)
    if u.scheme.lower() not in _DEFAULT_PORT or not u.hostname:
        raise SubscriptionError(f"channel.endpoint '{url[:80]}' is not an http(s) URL")
    if "@" in u.netloc or "\\" in url:
        raise SubscriptionError("channel.endpoint must not hold user information ('user@host') or backslashes")
    try:
        port = u.port or _DEFAULT_PORT[u.scheme.lower()]
    except ValueError:
        raise SubscriptionError(f"channel.endpoint '{url[:80]}' has a malformed port") from None
    path = u.path or "/"
    lowered = path.lower()
    segments = tuple(path.split("/")[1:])
    if any(seg in (".", "..") for seg in segments) or any(e in lowered for e in ("%2e", "%2f", "%5c")):
        raise SubscriptionError("channel.endpoint's path must not hold dot segments or encoded separators")
    return Endpoint(u.scheme.lower(), u.hostname.lower().rstrip("."), port, segments)


def endpoint_allowed(endpoint: str, allowlist: tuple[str, ...]) -> bool:
    """Whether ``endpoint`` matches an allow-list entry: the same scheme, host and port exactly, and
    the entry's path as a whole-segment prefix of the endpoint's (``https://ehr.example/hook``
    allows ``…/hook`` and ``…/hook/mrd``, not ``…/hookother``; ``https://ehr.example`` allows any
    path on that host). An entry that does not parse allows nothing."""
    target = parse_endpoint(endpoint)
    for entry in allowlist:
        try:
            allowed = parse_endpoint(entry)
        except SubscriptionError:
            continue
        # a trailing slash ends the prefix: "https://h/" allows every path, "https://h/hook/" what is under /hook
        prefix = allowed.segments[:-1] if allowed.segments and allowed.segments[-1] == "" else allowed.segments
        if (allowed.scheme, allowed.host, allowed.port) == (target.scheme, target.host, target.port) \
                and target.segments[:len(prefix)] == prefix:
            return True
    return False


def criteria_type(resource: dict[str, Any]) -> str:
    """The resource type a Subscription notifies about: ``Observation`` for our MRD topic (Backport
    IG), else the type of its R4 ``criteria`` (``Observation?code=…`` -> ``Observation``)."""
    profiles = (resource.get("meta") or {}).get("profile") or []
    if BACKPORT + "backport-subscription" in profiles or resource.get("criteria") == MRD_TOPIC:
        return "Observation"
    return str(resource.get("criteria") or "").partition("?")[0]


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
    profiles = (resource.get("meta") or {}).get("profile") or []
    backport = BACKPORT + "backport-subscription" in profiles or resource.get("criteria") == MRD_TOPIC
    topic, content, heartbeat, timeout = None, "empty", None, None
    if backport:
        topic, q, content, heartbeat, timeout = _backport(resource)
        rtype = "Observation"
    else:
        rtype, _, q = (resource.get("criteria") or "").partition("?")
    items = parse_qsl(q, keep_blank_values=True)
    if any(k.split(":")[0] in RESULT_PARAMS for k, _ in items):
        raise SubscriptionError(f"criteria: result parameters ({', '.join(RESULT_PARAMS)}) are not allowed")
    try:
        query = parse(rtype, items)
    except SearchError as exc:
        raise SubscriptionError(f"criteria: {exc}") from None
    endpoint = channel.get("endpoint") or ""
    if not isinstance(endpoint, str):
        raise SubscriptionError("channel.endpoint must be a URL")
    target = parse_endpoint(endpoint)
    payload = channel.get("payload")
    if backport and payload not in ("application/fhir+json", "application/json"):
        raise SubscriptionError("channel.payload of a Backport subscription is application/fhir+json (notification Bundles)")
    if not backport and payload not in (None, "application/fhir+json"):
        raise SubscriptionError(f"channel.payload '{str(payload)[:40]}' is not supported; leave it out or use application/fhir+json")
    loop = _loopback(target.host)
    if (content == "full-resource" if backport else payload) and target.scheme != "https" and not (development and loop):
        raise SubscriptionError("a payload with the resource is sent only to https endpoints "
                                "(or to a loopback host in development mode)")
    if not development and not endpoint_allowed(endpoint, allowlist):
        raise SubscriptionError("channel.endpoint is not on this server's allow-list of subscription endpoints")
    headers = []
    for h in channel.get("header") or []:
        name, sep, value = str(h).partition(":")
        if not sep or not name.strip() or any(c in name for c in " \r\n") or any(c in value for c in "\r\n"):
            raise SubscriptionError("channel.header entries must be 'Name: value'")
        headers.append((name.strip(), value.strip()))
    return SubscriptionSpec(resource.get("id", ""), resource.get("status", ""), query, endpoint, tuple(headers),
                            payload is not None and not backport, topic, content, heartbeat, timeout)
