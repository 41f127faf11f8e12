"""Delivering the subscription outbox over rest-hook (FHIR R4 §8.x Subscription), at least once and
in event-number order per subscription.

A background thread runs an asyncio loop with one httpx.AsyncClient. Every ``poll`` seconds it
looks up each subscription's oldest due event, and starts one delivery task per subscription that
has none running. A task sends its subscription's events one after another, so order holds, and
tasks run side by side, so an endpoint that hangs (up to ``subscription_timeout_seconds``) or is
down delays only its own subscription. Database calls run in worker threads, off the event loop.

- Success (2xx): the event is marked delivered, and the next one goes at once.
- Failure: the event is retried after an exponential backoff with jitter
  (``subscription_backoff_seconds`` × 2^(attempt-1), capped, × 0.5–1.5). After
  ``subscription_max_failures`` failures in a row the Subscription's status becomes ``error`` with
  ``error`` set; its events are kept, and delivery resumes when a client sets the status back to
  ``requested`` or ``active``.
- The process is killed: an event is marked delivered only after its 2xx, so it is sent again
  after the restart, with the same event number (``X-Subscription-Event``), and none is lost.

A ``requested`` Subscription is set ``active`` by the worker (R4: the server has set it up).
Headers from ``channel.header`` are sent and never logged; log lines name the subscription id,
never its endpoint or headers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from contextlib import nullcontext
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from sqlalchemy import func, select, update

from adapter.config import Settings
from adapter.store import Store
from adapter.store.db import now_instant
from adapter.store.outbox import event_count, owner_of, owners, pending
from adapter.store.schema import subscription_events
from adapter.subscriptions.notify import Event, notification_bundle
from adapter.subscriptions.spec import DELIVERING, SubscriptionError, SubscriptionSpec, parse_subscription

log = logging.getLogger("adapter.subscriptions")
#: Seconds between retention passes over delivered events.
PRUNE_EVERY = 600.0


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="microseconds")


class DeliveryWorker:
    """See the module docstring. ``start()``/``stop()`` from the service's lifespan."""

    def __init__(self, store: Store, settings: Settings, poll_seconds: float = 0.05, reload_seconds: float = 0.5) -> None:
        self.store, self.settings, self.poll, self.reload = store, settings, poll_seconds, reload_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dirty = False
        self._last_sent: dict[str, float] = {}  # subscription id -> when a notification last went out
        #: Called with the seconds from an event's commit to its delivery (the service's metrics).
        self.on_delivered: Any = None
        self._pruned = 0.0  # monotonic time of the last retention pass
        self._owners: dict[str, Any] = {}

    def prune(self) -> int:
        """Delete delivered events past ``subscription_event_retention_days`` (adapter/store/outbox.py
        ``prune_delivered``); returns how many."""
        days = self.settings.subscription_event_retention_days
        if not days:
            return 0
        from adapter.store.outbox import prune_delivered

        with self.store.engine.begin() as conn:
            return prune_delivered(conn, (datetime.now(UTC) - timedelta(days=days)).isoformat(timespec="microseconds"))

    # ------------------------------------------------------------------------------ database side

    def _subscriptions(self) -> dict[str, tuple[dict[str, Any], SubscriptionSpec | None]]:
        """Every stored Subscription, parsed, with its channel headers (kept outside the resource,
        adapter/store/outbox.py) put back; ``None`` for one that no longer passes the policy."""
        out: dict[str, tuple[dict[str, Any], SubscriptionSpec | None]] = {}
        with self.store.engine.connect() as conn:
            recorded = owners(conn)
        self._owners = recorded
        for res in self.store.iter_resources("Subscription"):
            try:
                spec = parse_subscription(res, development=self.settings.env == "development",
                                          allowlist=tuple(self.settings.subscription_endpoint_allowlist))
            except SubscriptionError:
                spec = None
            owner = recorded.get(res["id"])
            if spec is not None and owner is not None:
                spec = replace(spec, headers=owner.headers)
            out[res["id"]] = (res, spec)
        return out

    def refusal(self, sid: str, rtype: str) -> str | None:
        """Why the Subscription's owner may not be sent a ``rtype`` now (``None``: it may): the
        client that wrote it is revoked or unknown, or its role and the scopes of the token it wrote
        the Subscription with do not allow reading ``rtype`` (adapter/auth/policy.py). Checked at
        send time, for every event. A Subscription written with authentication off (development
        mode), or never written through the API, is sent only while authentication is off."""
        from adapter.auth.policy import Principal
        from adapter.store.security import ClientRegistry

        if not self.settings.auth_enabled:
            return None
        with self.store.engine.connect() as conn:
            owner = owner_of(conn, sid)
        if owner is None or owner.client_id == "development":
            return "it was not written by a registered client, and authentication is on"
        client = ClientRegistry(self.store).get(owner.client_id)
        if client is None or client.revoked:
            return "the client that wrote it is revoked"
        if not Principal(client.client_id, client.role, client.site, owner.scopes).allows("read", rtype):
            return f"the client that wrote it may not read {rtype}"
        return None

    def _set_status(self, sid: str, status: str, error: str | None = None) -> None:
        with self.store.transaction() as tx:
            cur = tx.current("Subscription", sid)
            res = self.store.read("Subscription", sid)
            if cur is None or res is None:
                return
            res = {**res, "status": status}
            if error:
                res["error"] = error
            else:
                res.pop("error", None)
            tx.put(res, cur[2])

    def _due(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            return pending(conn, now_instant())

    def _mark(self, ev: dict[str, Any], ok: bool, error: str | None, held: Any = None) -> int:
        """Record an attempt (in ``held``, the claiming transaction, when given); returns the
        failures in a row so far."""
        key = (subscription_events.c.subscription_id == ev["subscription_id"]) & (
            subscription_events.c.event_number == ev["event_number"])
        with nullcontext(held) if held is not None else self.store.engine.begin() as conn:
            if ok:
                conn.execute(update(subscription_events).where(key).values(delivered=now_instant(), last_error=None))
                return 0
            attempts = ev["attempts"] + 1
            s = self.settings
            delay = min(s.subscription_backoff_max_seconds, s.subscription_backoff_seconds * 2 ** (attempts - 1))
            delay *= random.uniform(0.5, 1.5)  # noqa: S311  (jitter, not cryptography)
            conn.execute(update(subscription_events).where(key).values(
                attempts=attempts, next_attempt=_later(delay), last_error=(error or "")[:500]))
            return attempts

    def _head(self, sid: str) -> dict[str, Any] | None:
        return next((e for e in self._due() if e["subscription_id"] == sid), None)

    def _payload(self, ev: dict[str, Any]) -> dict[str, Any] | None:
        _state, res = self.store.vread(ev["resource_type"], ev["resource_id"], ev["version_id"])
        return res

    # ------------------------------------------------------------------------------ delivery side

    def _count(self, sid: str) -> int:
        with self.store.engine.connect() as conn:
            return event_count(conn, sid)

    def _bundle(self, spec: SubscriptionSpec, kind: str, ev: dict[str, Any] | None) -> dict[str, Any]:
        events = []
        if ev is not None:
            res = self._payload(ev) if spec.content == "full-resource" else None
            events.append(Event(ev["event_number"], ev["created"], f"{ev['resource_type']}/{ev['resource_id']}", res))
        since = ev["event_number"] if ev is not None else self._count(spec.id)
        status = "requested" if kind == "handshake" else "active"
        return notification_bundle(spec.id, spec.topic or "", status, kind, since, events, spec.content)

    async def _post(self, client: httpx.AsyncClient, spec: SubscriptionSpec, body: bytes | None,
                    extra: dict[str, str], put_url: str | None = None) -> str | None:
        headers = {k: v for k, v in spec.headers}
        headers.update(extra)
        if body is not None:
            headers["Content-Type"] = "application/fhir+json"
        timeout = spec.timeout or self.settings.subscription_timeout_seconds
        self._last_sent[spec.id] = time.monotonic()
        try:
            if put_url:
                r = await client.put(put_url, content=body, headers=headers, timeout=timeout)
            else:
                r = await client.post(spec.endpoint, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return f"{exc.__class__.__name__}"
        return None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"

    async def _send(self, client: httpx.AsyncClient, spec: SubscriptionSpec, ev: dict[str, Any]) -> str | None:
        """Send one event's notification; ``None`` on success, else the reason. R4 core: an empty
        POST, or PUT [endpoint]/[type]/[id] with the resource. Backport: a notification Bundle."""
        extra = {"X-Subscription-Id": ev["subscription_id"], "X-Subscription-Event": str(ev["event_number"])}
        if spec.topic:
            bundle = await asyncio.to_thread(self._bundle, spec, "event-notification", ev)
            return await self._post(client, spec, orjson.dumps(bundle), extra)
        if spec.full_resource:
            res = await asyncio.to_thread(self._payload, ev)
            if res is None:
                return None  # the version is gone (history pruned): nothing left to send
            url = f"{spec.endpoint.rstrip('/')}/{ev['resource_type']}/{ev['resource_id']}"
            return await self._post(client, spec, orjson.dumps(res), extra, put_url=url)
        return await self._post(client, spec, None, extra)

    async def _handshake(self, client: httpx.AsyncClient, spec: SubscriptionSpec) -> None:
        """Backport: a ``handshake`` Bundle; the Subscription becomes ``active`` when it is
        accepted (2xx), else ``error``. R4 core subscriptions become ``active`` at once."""
        if spec.topic:
            bundle = await asyncio.to_thread(self._bundle, spec, "handshake", None)
            error = await self._post(client, spec, orjson.dumps(bundle), {"X-Subscription-Id": spec.id})
            if error:
                await asyncio.to_thread(self._set_status, spec.id, "error", f"handshake failed: {error}")
                self._dirty = True
                return
        await asyncio.to_thread(self._set_status, spec.id, "active")
        self._dirty = True

    async def _heartbeat(self, client: httpx.AsyncClient, spec: SubscriptionSpec) -> None:
        bundle = await asyncio.to_thread(self._bundle, spec, "heartbeat", None)
        error = await self._post(client, spec, orjson.dumps(bundle), {"X-Subscription-Id": spec.id})
        if error:
            log.info("subscription %s: heartbeat not delivered (%s)", spec.id, error)

    def _claim(self, sid: str) -> tuple[Any, dict[str, Any] | None]:
        """PostgreSQL: lock the subscription's head event (``FOR UPDATE SKIP LOCKED``) in a
        transaction kept open while it is sent, so that worker processes sharing the outbox never
        send one subscription's events at once or out of order: another worker finds the head
        locked and passes the subscription over. Returns (connection, event) or (None, None)."""
        se = subscription_events
        conn = self.store.engine.connect()
        conn.begin()
        head = (select(func.min(se.c.event_number)).where(se.c.subscription_id == sid, se.c.delivered.is_(None))
                .scalar_subquery())
        # "delivered IS NULL" on the row itself: PostgreSQL re-checks it on the row version it locks,
        # so an event another worker delivered while this statement waited is not taken again
        row = conn.execute(select(se).where(se.c.subscription_id == sid, se.c.event_number == head,
                                            se.c.delivered.is_(None), se.c.next_attempt <= now_instant())
                           .with_for_update(skip_locked=True)).first()
        if row is None:
            conn.rollback()
            conn.close()
            return None, None
        return conn, dict(row._mapping)

    def _release(self, conn: Any, ev: dict[str, Any], ok: bool, error: str | None) -> int:
        try:
            failures = self._mark(ev, ok, error, conn)
            conn.commit()
            return failures
        finally:
            conn.close()

    async def _run_subscription(self, client: httpx.AsyncClient, sid: str, spec: SubscriptionSpec) -> None:
        shared = self.store.engine.dialect.name == "postgresql"
        while not self._stop.is_set():
            conn = None
            if shared:
                conn, ev = await asyncio.to_thread(self._claim, sid)
            else:  # SQLite: one worker process; a lock held across the send would block every writer
                ev = await asyncio.to_thread(self._head, sid)
            if ev is None:
                return
            refused = await asyncio.to_thread(self.refusal, sid, ev["resource_type"])
            if refused is not None:  # nothing is sent; the events wait until the status is set back
                if conn is not None:
                    await asyncio.to_thread(lambda c=conn: (c.rollback(), c.close()))
                await asyncio.to_thread(self._set_status, sid, "error", f"delivery stopped: {refused}")
                self._dirty = True
                log.warning("subscription %s: delivery stopped (%s)", sid, refused)
                return
            error = await self._send(client, spec, ev)
            failures = await asyncio.to_thread(self._release, conn, ev, error is None, error) if conn is not None \
                else await asyncio.to_thread(self._mark, ev, error is None, error)
            if error is None:
                if self.on_delivered is not None:
                    self.on_delivered(max(0.0, (datetime.now(UTC) - datetime.fromisoformat(
                        ev["created"].replace("Z", "+00:00"))).total_seconds()))
                continue
            log.info("subscription %s: event %d not delivered (%s), attempt %d", sid, ev["event_number"], error, failures)
            if failures >= self.settings.subscription_max_failures:
                await asyncio.to_thread(self._give_up, sid, ev, error)
            return

    def _give_up(self, sid: str, ev: dict[str, Any], error: str) -> None:
        """Status ``error``; the head event gets fresh attempts for when the status is set back."""
        self._set_status(sid, "error", f"{self.settings.subscription_max_failures} failed deliveries in a row; last: {error}")
        self._dirty = True  # reload before scheduling: no task may start for it on the old status
        key = (subscription_events.c.subscription_id == sid) & (subscription_events.c.event_number == ev["event_number"])
        with self.store.engine.begin() as conn:
            conn.execute(update(subscription_events).where(key).values(attempts=0, next_attempt=now_instant()))
        log.warning("subscription %s set to error after %d failed deliveries", sid, self.settings.subscription_max_failures)

    async def _loop(self) -> None:
        tasks: dict[str, asyncio.Task[None]] = {}
        subs: dict[str, tuple[dict[str, Any], SubscriptionSpec | None]] = {}
        loaded = 0.0
        async with httpx.AsyncClient(timeout=self.settings.subscription_timeout_seconds) as client:
            while not self._stop.is_set():
                try:
                    if self._dirty or time.monotonic() - loaded >= self.reload:  # status changes seen within this
                        self._dirty = False
                        subs = await asyncio.to_thread(self._subscriptions)
                        loaded = time.monotonic()
                    for sid, (res, spec) in subs.items():
                        busy = sid in tasks and not tasks[sid].done()
                        if busy or spec is None:
                            continue
                        if res.get("status") == "requested":
                            tasks[sid] = asyncio.create_task(self._handshake(client, spec))
                            res["status"] = "handshake"  # not again before the reload
                        elif (res.get("status") == "active" and spec.heartbeat
                              and time.monotonic() - self._last_sent.setdefault(sid, time.monotonic()) >= spec.heartbeat):
                            tasks[sid] = asyncio.create_task(self._heartbeat(client, spec))
                    if time.monotonic() - self._pruned >= PRUNE_EVERY:
                        self._pruned = time.monotonic()
                        pruned = await asyncio.to_thread(self.prune)
                        if pruned:
                            log.info("pruned %d delivered subscription event(s) past retention", pruned)
                    due = await asyncio.to_thread(self._due)
                    for ev in due:
                        sid = ev["subscription_id"]
                        res, spec = subs.get(sid, ({}, None))
                        if spec is None or res.get("status") not in DELIVERING or (sid in tasks and not tasks[sid].done()):
                            continue
                        tasks[sid] = asyncio.create_task(self._run_subscription(client, sid, spec))
                except Exception:  # noqa: BLE001  (a database hiccup must not stop delivery for good)
                    log.exception("subscription delivery loop iteration failed")
                await asyncio.sleep(self.poll)
            for t in tasks.values():
                t.cancel()

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="subscriptions", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
