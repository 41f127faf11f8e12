"""The subscription outbox (``subscription_events``), written inside the store's transactions.

:func:`record_events` runs at the end of every write (``Transaction.upsert``: ingestion, PUT,
POST, transactions): it finds the stored Subscriptions whose criteria the written resources now
match, with the same SQL as search (adapter/store/search.py), and adds one event per match. So an
event exists exactly when the write commits, and a rolled-back write notifies no one.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from sqlalchemy import Connection, func, select

from adapter.store.schema import resources, subscription_events
from adapter.store.search import query_condition
from adapter.subscriptions.spec import COLLECTING, SubscriptionError, SubscriptionSpec, parse_subscription

log = logging.getLogger("adapter.subscriptions")


def collecting_subscriptions(conn: Connection) -> list[SubscriptionSpec]:
    """Stored Subscriptions whose status collects events (``requested``, ``active``, ``error``)."""
    out = []
    for (text,) in conn.execute(select(resources.c.resource).where(resources.c.type == "Subscription",
                                                                   resources.c.deleted.is_(False))):
        res = orjson.loads(text)
        if res.get("status") not in COLLECTING:
            continue
        try:  # checked when written; the endpoint policy is the delivery worker's concern
            out.append(parse_subscription(res))
        except SubscriptionError:
            log.warning("stored Subscription %s no longer parses; it is skipped", res.get("id"))
    return out


def record_events(conn: Connection, written: list[tuple[str, str, int]], stamp: str) -> int:
    """Add an event for each (Subscription, written resource) match. ``written`` holds the
    (type, id, version) of the resources created or updated in this transaction. Returns the
    number of events added."""
    by_type: dict[str, dict[str, int]] = {}
    for rtype, rid, version in written:
        if rtype != "Subscription":
            by_type.setdefault(rtype, {})[rid] = version
    if not by_type:
        return 0
    subs = [s for s in collecting_subscriptions(conn) if s.query.type in by_type]
    added = 0
    for sub in subs:
        versions = by_type[sub.query.type]
        ids = list(versions)
        matched: list[str] = []
        for i in range(0, len(ids), 500):
            matched += [r for (r,) in conn.execute(select(resources.c.id).where(
                resources.c.type == sub.query.type, resources.c.id.in_(ids[i:i + 500]), query_condition(sub.query)))]
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
    """A deleted Subscription's events go with it."""
    conn.execute(subscription_events.delete().where(subscription_events.c.subscription_id == subscription_id))


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
