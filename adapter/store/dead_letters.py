"""The MLLP dead-letter table (``mllp_dead_letters``): HL7 v2 messages the listener acknowledged
``AE`` or ``AR`` and did not store, each kept with its errors so that an integration engineer can
list them and replay them once the cause is fixed (``adapter dead-letters list|replay``).

A message is kept as the bytes received (it holds patient identifiers, like the resources table);
:func:`listing` returns only what is safe to print: id, time, site, MSH-10, ACK code and errors.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import select, update

from adapter.store.db import Store, now_instant
from adapter.store.schema import mllp_dead_letters


@dataclass(frozen=True)
class DeadLetter:
    """One kept message: ``errors`` is a list of ``{"location", "code", "reason"}`` dicts (the ERR
    segments its ACK carried), ``message`` the bytes received (without MLLP framing)."""

    id: str
    received: str
    site: str
    mapping: str
    control_id: str | None
    ack_code: str
    errors: list[dict[str, Any]]
    message: bytes
    replayed: str | None
    replay_ingestion: str | None

    def listing(self) -> dict[str, Any]:
        """What may be printed or logged: everything but the message itself."""
        return {"id": self.id, "received": self.received, "site": self.site, "mapping": self.mapping,
                "control_id": self.control_id, "ack_code": self.ack_code, "errors": self.errors,
                "replayed": self.replayed, "replay_ingestion": self.replay_ingestion}


def keep(store: Store, site: str, mapping: str, control_id: str | None, ack_code: str,
         errors: list[dict[str, Any]], message: bytes) -> str:
    """Store one message in the dead-letter table, in its own transaction; returns its id.
    Raises StoreError when the database refuses the write."""
    rid = str(uuid.uuid4())
    row = {"id": rid, "received": now_instant(), "site": site, "mapping": mapping,
           "control_id": (control_id or None) and control_id[:200], "ack_code": ack_code,
           "errors": orjson.dumps(errors).decode(), "message": message, "replayed": None, "replay_ingestion": None}
    with store.transaction() as tx:
        tx.conn.execute(mllp_dead_letters.insert(), [row])
    return rid


def _letter(row: Any) -> DeadLetter:
    return DeadLetter(row.id, row.received, row.site, row.mapping, row.control_id, row.ack_code,
                      orjson.loads(row.errors), bytes(row.message), row.replayed, row.replay_ingestion)


def letters(store: Store, site: str | None = None, include_replayed: bool = False) -> list[DeadLetter]:
    """Kept messages, oldest first; by default only those not yet replayed."""
    q = select(mllp_dead_letters).order_by(mllp_dead_letters.c.received, mllp_dead_letters.c.id)
    if site is not None:
        q = q.where(mllp_dead_letters.c.site == site)
    if not include_replayed:
        q = q.where(mllp_dead_letters.c.replayed.is_(None))
    with store.engine.connect() as conn:
        return [_letter(r) for r in conn.execute(q)]


def letter(store: Store, letter_id: str) -> DeadLetter | None:
    """One kept message, or ``None``."""
    with store.engine.connect() as conn:
        row = conn.execute(select(mllp_dead_letters).where(mllp_dead_letters.c.id == letter_id)).first()
    return None if row is None else _letter(row)


def mark_replayed(store: Store, letter_id: str, ingestion_id: str) -> bool:
    """Record that a replay stored the message (compare-and-set: only the first of two concurrent
    replays marks it). Returns whether this call marked it."""
    with store.transaction() as tx:
        done = tx.conn.execute(update(mllp_dead_letters)
                               .where(mllp_dead_letters.c.id == letter_id, mllp_dead_letters.c.replayed.is_(None))
                               .values(replayed=now_instant(), replay_ingestion=ingestion_id))
    return done.rowcount == 1
