"""The subscription outbox (``subscription_events``), written inside the store's transactions.

:func:`record_events` runs at the end of every write (``Transaction.upsert``: ingestion, PUT,
POST, transactions): it finds the stored Subscriptions whose criteria the written resources now
match, with the same SQL as search (adapter/store/search.py), and adds one event per match. So an
event exists exactly when the write commits, and a rolled-back write notifies no one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from adapter.store.schema import resources, subscription_events, subscription_owners
from adapter.store.search import query_condition
from adapter.subscriptions.spec import COLLECTING, SubscriptionError, SubscriptionSpec, parse_subscription

log = logging.getLogger("adapter.subscriptions")


#: Parsed Subscriptions by id: (version, spec). A stored Subscription is parsed once per version.
_PARSED: dict[str, tuple[int, SubscriptionSpec | None]] = {}


def collecting_subscriptions(conn: Connection) -> list[tuple[SubscriptionSpec, str]]:
    """Stored Subscriptions whose status collects events (``requested``, ``active``, ``error``),
    each with its site (empty: a network-wide subscription; otherwise it only ever matches that
    site's resources, whatever its criteria say)."""
    out = []
    for sid, version, status, site in conn.execute(select(resources.c.id, resources.c.version_id, resources.c.status,
                                                          resources.c.site).where(
            resources.c.type == "Subscription", resources.c.deleted.is_(False)).order_by(resources.c.id)):
        if status not in COLLECTING:
            continue
        cached = _PARSED.get(sid)
        if cached is None or cached[0] != version:
            text = conn.execute(select(resources.c.resource).where(resources.c.type == "Subscription",
                                                                   resources.c.id == sid)).scalar_one()
            try:  # checked when written; the endpoint policy is the delivery worker's concern
                cached = (version, parse_subscription(orjson.loads(text)))
            except SubscriptionError:
                log.warning("stored Subscription %s no longer parses; it is skipped", sid)
                cached = (version, None)
            _PARSED[sid] = cached
        if cached[1] is not None:
            out.append((cached[1], site))
    return out


def _patients_of(spec: SubscriptionSpec) -> set[str] | None:
    """The Patient ids a subscription's ``patient``/``subject`` clause allows (``None``: any), so
    that a write about another patient is passed over without a query."""
    allowed: set[str] | None = None
    for c in spec.query.clauses:
        if c.name in ("patient", "subject") and c.kind == "reference":
            ids = set()
            for v in c.values:
                ref = getattr(v, "key", "")
                if not isinstance(ref, str) or not ref.startswith("Patient/"):
                    return None  # another form (a chain, a full URL): let SQL decide
                ids.add(ref.split("/", 1)[1])
            allowed = ids if allowed is None else allowed & ids
    return allowed


def record_events(conn: Connection, written: list[tuple[str, str, int, str | None]], stamp: str) -> int:
    """Add an event for each (Subscription, written resource) match. ``written`` holds the
    (type, id, version, patient id) of the resources created or updated in this transaction.
    Returns the number of events added."""
    by_type: dict[str, dict[str, int]] = {}
    patient_of: dict[tuple[str, str], str | None] = {}
    for rtype, rid, version, pid in written:
        if rtype != "Subscription":
            by_type.setdefault(rtype, {})[rid] = version
            patient_of[(rtype, rid)] = pid
    if not by_type:
        return 0
    subs = [(s, site) for s, site in collecting_subscriptions(conn) if s.query.type in by_type]
    added = 0
    for sub, site in subs:
        versions = by_type[sub.query.type]
        allowed = _patients_of(sub)
        ids = [r for r in versions if allowed is None or patient_of[(sub.query.type, r)] in allowed]
        if not ids:
            continue
        matched: list[str] = []
        for i in range(0, len(ids), 500):
            matched += [r for (r,) in conn.execute(select(resources.c.id).where(
                resources.c.type == sub.query.type, resources.c.id.in_(ids[i:i + 500]), query_condition(sub.query),
                *([resources.c.site == site] if site else [])))]
        if not matched:
            continue
        if conn.dialect.name == "postgresql":  # event numbers of one subscription: one writer at a time
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(f"subscription:{sub.id}", 0))))
        last = conn.execute(select(func.max(subscription_events.c.event_number))
                            .where(subscription_events.c.subscription_id == sub.id)).scalar() or 0
        order = {rid: n for n, rid in enumerate(ids)}
        rows = [{"subscription_id": sub.id, "event_number": last + k, "resource_type": sub.query.type,
                 "resource_id": rid, "version_id": versions[rid], "created": stamp, "attempts": 0, "next_attempt": stamp}
                for k, rid in enumerate(sorted(matched, key=order.__getitem__), start=1)]
        conn.execute(subscription_events.insert(), rows)
        added += len(rows)
    return added


def drop_events(conn: Connection, subscription_id: str) -> None:
    """A deleted Subscription's events (and its recorded owner and channel headers) go with it."""
    conn.execute(subscription_events.delete().where(subscription_events.c.subscription_id == subscription_id))
    conn.execute(subscription_owners.delete().where(subscription_owners.c.subscription_id == subscription_id))


def prune_delivered(conn: Connection, before: str) -> int:
    """Delete events delivered before ``before`` (an instant), except each subscription's highest-
    numbered event, which keeps the event count (``eventsSinceSubscriptionStart``) going. Undelivered
    events are never deleted. Returns the number deleted. ``$events`` cannot replay pruned events."""
    se = subscription_events
    latest = se.alias("latest")
    newest = (select(func.max(latest.c.event_number)).where(latest.c.subscription_id == se.c.subscription_id)
              .scalar_subquery())
    result = conn.execute(se.delete().where(se.c.delivered.is_not(None), se.c.delivered < before,
                                            se.c.event_number < newest))
    return int(result.rowcount or 0)


def pending(conn: Connection, now: str) -> list[dict[str, Any]]:
    """Each subscription's oldest undelivered event that is due (``next_attempt`` reached), with
    the subscription id: delivery goes in event-number order, one event at a time per subscription."""
    head = (select(subscription_events.c.subscription_id, func.min(subscription_events.c.event_number).label("n"))
            .where(subscription_events.c.delivered.is_(None)).group_by(subscription_events.c.subscription_id)
            .subquery())
    q = (select(subscription_events).join(head, (head.c.subscription_id == subscription_events.c.subscription_id)
                                          & (head.c.n == subscription_events.c.event_number))
         .where(subscription_events.c.next_attempt <= now))
    return [dict(r._mapping) for r in conn.execute(q)]


def event_count(conn: Connection, subscription_id: str) -> int:
    """Events recorded for a subscription since it started (the highest event number)."""
    return int(conn.execute(select(func.max(subscription_events.c.event_number))
                            .where(subscription_events.c.subscription_id == subscription_id)).scalar() or 0)


def events_between(conn: Connection, subscription_id: str, first: int, last: int) -> list[dict[str, Any]]:
    """A subscription's events numbered ``first`` to ``last`` (inclusive), in order ($events)."""
    q = (select(subscription_events).where(subscription_events.c.subscription_id == subscription_id,
                                           subscription_events.c.event_number.between(first, last))
         .order_by(subscription_events.c.event_number))
    return [dict(r._mapping) for r in conn.execute(q)]


# ----------------------------------------------------------------- owners and channel secrets

#: What a Subscription's ``channel.header`` values read as: the values are write-only (credentials
#: for the receiving endpoint). A client that sends this mask back keeps the stored value.
HEADER_MASK = "***"


@dataclass(frozen=True)
class SubscriptionOwner:
    """Who wrote a Subscription through the API: client id, role, site and the token's scopes
    (``development``: written with authentication off), and its channel headers ``(name, value)``."""

    client_id: str
    role: str
    site: str | None
    scopes: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]


def owner_of(conn: Connection, subscription_id: str) -> SubscriptionOwner | None:
    """The recorded owner of a Subscription (``None``: none recorded)."""
    row = conn.execute(select(subscription_owners).where(subscription_owners.c.subscription_id == subscription_id)).first()
    return None if row is None else _owner(row)


def owners(conn: Connection) -> dict[str, SubscriptionOwner]:
    """Every recorded owner, by subscription id."""
    return {row.subscription_id: _owner(row) for row in conn.execute(select(subscription_owners))}


def _owner(row: Any) -> SubscriptionOwner:
    return SubscriptionOwner(row.client_id, row.role, row.site, tuple(row.scopes.split()),
                             tuple((n, v) for n, v in orjson.loads(row.headers)))


def record_owner(conn: Connection, subscription_id: str, owner: SubscriptionOwner) -> None:
    """Record (or replace) a Subscription's owner and channel headers, in the writing transaction."""
    conn.execute(subscription_owners.delete().where(subscription_owners.c.subscription_id == subscription_id))
    conn.execute(subscription_owners.insert().values(
        subscription_id=subscription_id, client_id=owner.client_id, role=owner.role, site=owner.site,
        scopes=" ".join(owner.scopes), headers=orjson.dumps([list(h) for h in owner.headers]).decode()))


def split_headers(resource: dict[str, Any], stored: tuple[tuple[str, str], ...]) -> tuple[dict[str, Any], tuple[tuple[str, str], ...]]:
    """``(resource with every channel.header value masked, the headers to keep)``: a header sent
    with the mask as its value keeps the value stored for that name (R4 Subscription.channel.header
    carries credentials; they are never returned). Headers that are not ``Name: value`` are left
    as they are (validation refuses them)."""
    channel = resource.get("channel")
    if not isinstance(channel, dict) or not isinstance(channel.get("header"), list):
        return resource, ()
    known = dict(stored)
    kept: list[tuple[str, str]] = []
    masked: list[Any] = []
    for h in channel["header"]:
        name, sep, value = str(h).partition(":") if isinstance(h, str) else ("", "", "")
        if not sep or not name.strip():
            masked.append(h)
            continue
        name, value = name.strip(), value.strip()
        if value == HEADER_MASK and name in known:
            value = known[name]
        kept.append((name, value))
        masked.append(f"{name}: {HEADER_MASK}")
    return {**resource, "channel": {**channel, "header": masked}}, tuple(kept)
