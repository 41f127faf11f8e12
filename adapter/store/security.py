"""Registered clients, used assertion ids, and the append-only audit trail (tables in
adapter/store/schema.py, migration 0006)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from adapter.store.db import Store, now_instant
from adapter.store.schema import audit_events, auth_clients, auth_jti


@dataclass(frozen=True)
class Client:
    """A registered SMART Backend Services client (its JWKS holds public keys only)."""

    client_id: str
    name: str
    role: str
    site: str | None
    scopes: list[str]
    jwks: dict[str, Any]
    created: str
    revoked: str | None

    def summary(self) -> dict[str, Any]:
        """The client without its keys (key ids only)."""
        return {"client_id": self.client_id, "name": self.name, "role": self.role, "site": self.site,
                "scopes": self.scopes, "kids": [k.get("kid") for k in self.jwks.get("keys", [])],
                "created": self.created, "revoked": self.revoked}


class ClientRegistry:
    """Clients in the store. ``add`` checks nothing itself: adapter/auth/clients.py validates first."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, name: str, role: str, site: str | None, scopes: list[str], jwks: dict[str, Any]) -> Client:
        """Register a client (a new random ``client_id``); returns it. Raises the store's errors."""
        client = Client(str(uuid.uuid4()), name, role, site, scopes, jwks, now_instant(), None)
        with self.store.engine.begin() as conn:
            conn.execute(insert(auth_clients).values(client_id=client.client_id, name=name, role=role, site=site,
                                                     scopes=" ".join(scopes), jwks=orjson.dumps(jwks).decode(),
                                                     created=client.created))
        return client

    def get(self, client_id: str) -> Client | None:
        """The client, revoked or not, or ``None`` when it was never registered."""
        with self.store.engine.connect() as conn:
            row = conn.execute(select(auth_clients).where(auth_clients.c.client_id == client_id)).first()
        return None if row is None else _client(row)

    def all(self) -> list[Client]:
        """Every client, oldest first."""
        with self.store.engine.connect() as conn:
            return [_client(r) for r in conn.execute(select(auth_clients).order_by(auth_clients.c.created))]

    def revoke(self, client_id: str) -> bool:
        """Revoke a client: its assertions and the access tokens it already holds stop working.
        Returns ``False`` for an unknown or already revoked client."""
        with self.store.engine.begin() as conn:
            n = conn.execute(update(auth_clients).where(auth_clients.c.client_id == client_id,
                                                        auth_clients.c.revoked.is_(None)).values(revoked=now_instant()))
        return n.rowcount == 1

    def use_jti(self, client_id: str, jti: str, expires: int) -> bool:
        """Record a client assertion's ``jti``; ``False`` when it was used before (a replay).
        Expired entries are pruned on the way."""
        now = int(time.time())
        if len(jti) > 255:  # the column's width; a longer jti is kept as its hash (still unique)
            import hashlib

            jti = "sha256:" + hashlib.sha256(jti.encode("utf-8", "surrogatepass")).hexdigest()
        try:
            with self.store.engine.begin() as conn:
                conn.execute(delete(auth_jti).where(auth_jti.c.expires < now - 600))
                conn.execute(insert(auth_jti).values(client_id=client_id, jti=jti, expires=expires))
        except IntegrityError:
            return False
        return True


def _client(row: Any) -> Client:
    return Client(row.client_id, row.name, row.role, row.site, row.scopes.split(), orjson.loads(row.jwks),
                  row.created, row.revoked)


class AuditTrail:
    """The append-only audit trail: :meth:`append` adds one AuditEvent; :meth:`search` reads them
    newest first. Database triggers refuse updates and deletes."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, event: dict[str, Any], *, client_id: str | None, role: str | None, site: str | None,
               status: int, method: str, path: str, entity: str | None, wait_seconds: float | None = None,
               if_absent: bool = False) -> bool:
        """Store one AuditEvent (adapter/auth/audit.py) with its search columns; ``path`` is the
        request path without its query (cut at 500 characters). ``wait_seconds``: give up (raise
        the database's error) when the write cannot start within this long (SQLite's single write
        lock; PostgreSQL's lock timeout); ``None`` waits as long as the store does. ``if_absent``:
        an event already stored (same id) is left alone (a spooled event written again). Returns
        whether a row was inserted."""
        row = dict(id=event["id"], recorded=event["recorded"], client_id=client_id, role=role, site=site,
                   action=event["action"], subtype=(event.get("subtype") or [{}])[0].get("code", ""),
                   outcome=event["outcome"], status=status, method=method, path=path[:500], entity=entity,
                   resource=orjson.dumps(event).decode())
        engine = self._quick(wait_seconds) if wait_seconds is not None else self.store.engine
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql" and wait_seconds is not None:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(wait_seconds * 1000))}")
            if if_absent and conn.execute(select(audit_events.c.id).where(audit_events.c.id == row["id"])).first():
                return False
            conn.execute(insert(audit_events).values(**row))
        return True

    def _quick(self, seconds: float) -> Any:
        """An engine whose SQLite connections give up on a held write lock after ``seconds`` (the
        store's engine waits ``busy_seconds``); PostgreSQL uses the store's engine."""
        if self.store.engine.dialect.name != "sqlite":
            return self.store.engine
        if getattr(self, "_quick_engine", None) is None:
            from sqlalchemy import create_engine, event

            from adapter.store.db import _sqlite_pragmas

            self._quick_engine = create_engine(self.store.url, connect_args={"timeout": seconds})
            event.listen(self._quick_engine, "connect", _sqlite_pragmas)
        return self._quick_engine

    def search(self, *, since: str | None = None, until: str | None = None, client_id: str | None = None,
               outcome: str | None = None, action: str | None = None, subtype: str | None = None,
               entity: str | None = None, count: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """``(total, events)`` matching every given filter, newest first (``since``/``until``:
        ``recorded`` at or after / before these instants)."""
        from sqlalchemy import func

        conds = []
        for col, value in ((audit_events.c.client_id, client_id), (audit_events.c.outcome, outcome),
                           (audit_events.c.action, action), (audit_events.c.subtype, subtype),
                           (audit_events.c.entity, entity)):
            if value is not None:
                conds.append(col == value)
        if since:
            conds.append(audit_events.c.recorded >= since)
        if until:
            conds.append(audit_events.c.recorded < until)
        with self.store.engine.connect() as conn:
            total = int(conn.execute(select(func.count()).select_from(audit_events).where(*conds)).scalar() or 0)
            rows = conn.execute(select(audit_events.c.resource).where(*conds)
                                .order_by(audit_events.c.recorded.desc(), audit_events.c.id).offset(offset).limit(count))
            return total, [orjson.loads(t) for (t,) in rows]
