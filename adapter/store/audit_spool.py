"""No audit event is ever dropped: AuditEvents that cannot be written at once are spooled to disk
and written later (issue 17, defect 10).

The service writes one AuditEvent per request before the response's last byte. On SQLite the
database has a single writer, so during a long ingestion an audit insert would wait for the
ingestion's transaction, and the request with it (and, past the busy timeout, the event was lost).
:class:`AuditSpool` instead tries the insert with a short lock wait (``quick_seconds``); when the
database is busy or unreachable it appends the event as one JSON line to a spool file of this
process (flushed and ``fsync``-ed before the call returns) and a background thread writes the
spooled events into the database once it can. Writes are idempotent (an event's id is its primary
key), so an event written twice after a crash is stored once.

Spool files live in ``<folder>/<hash of the database URL>/`` (two deployments, or two test
databases, never drain into each other). ``<pid>-<n>.ndjson`` is the file this process appends to;
the drain renames it to ``<pid>-<n>.pending`` (so appends never race the drain), and any drainer
claims a pending file by renaming it to ``….draining-<its pid>`` before reading it. Files of
processes that are gone (open, pending or half-drained) are claimed the same way: a spooled event
survives a SIGKILL.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from adapter.store.security import AuditTrail

log = logging.getLogger("adapter.audit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AuditSpool:
    """Write AuditEvents now when the database lets us within ``quick_seconds``, else spool them
    (see the module docstring). ``record`` never raises for a database problem; it raises only when
    the event can be neither written nor spooled (the spool folder is not writable), which the
    caller logs."""

    def __init__(self, trail: AuditTrail, folder: Path, quick_seconds: float = 0.25, drain_seconds: float = 1.0) -> None:
        import hashlib

        url = trail.store.engine.url.render_as_string(hide_password=True)
        self.trail, self.folder = trail, Path(folder) / hashlib.sha256(url.encode()).hexdigest()[:16]
        self.quick_seconds, self.drain_seconds = quick_seconds, drain_seconds
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._n = 0
        self.spooled = 0  # events spooled by this process (for tests and metrics)

    # ---------------------------------------------------------------------------------- writing

    def record(self, event: dict[str, Any], **columns: Any) -> bool:
        """Store one AuditEvent (``columns``: :meth:`AuditTrail.append`'s keyword arguments).
        Returns ``True`` when it was written to the database now, ``False`` when it was spooled."""
        try:
            self.trail.append(event, wait_seconds=self.quick_seconds, **columns)
            return True
        except Exception as exc:  # noqa: BLE001  (busy, locked, unreachable: spool it, never drop it)
            log.info("audit event spooled (%s)", exc.__class__.__name__)
        line = orjson.dumps({"event": event, "columns": columns}) + b"\n"
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            with self._current().open("ab") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.spooled += 1
        return False

    def _current(self) -> Path:
        return self.folder / f"{os.getpid()}-{self._n}.ndjson"

    # --------------------------------------------------------------------------------- draining

    def _claim(self) -> list[Path]:
        """Spool files to drain now, each renamed to ``….draining-<pid>`` (an atomic, exclusive
        claim): this process's open file, every pending file, and the open or half-drained files of
        processes that are gone."""
        if not self.folder.is_dir():
            return []
        with self._lock:
            mine = self._current()
            if mine.exists():
                self._n += 1
                mine.rename(mine.with_suffix(".pending"))
        out: list[Path] = []
        me = os.getpid()
        for f in sorted(self.folder.iterdir()):
            if f.name.endswith(f".draining-{me}"):  # an earlier pass of ours that the database cut short
                out.append(f)
                continue
            owner = f.name.split("-", 1)[0]
            gone = owner.isdigit() and int(owner) != me and not _alive(int(owner))
            drainer = f.name.rsplit(".draining-", 1)[1] if ".draining-" in f.name else ""
            stale_drain = drainer.isdigit() and not _alive(int(drainer))
            if f.suffix == ".pending" or (f.suffix == ".ndjson" and gone) or stale_drain:
                claimed = f.with_name(f"{f.name.split('.', 1)[0]}.draining-{me}")
                try:
                    f.rename(claimed)
                except OSError:  # another drainer took it first
                    continue
                out.append(claimed)
        return out

    def drain(self) -> int:
        """Write every spooled event into the database (waiting for locks as long as the store
        does); a file is deleted only when all its events are stored. Returns how many were
        written. Raises the store's error when the database still refuses (the files stay)."""
        written = 0
        for f in self._claim():
            for raw in f.read_bytes().splitlines():
                if not raw.strip():
                    continue
                try:
                    item = orjson.loads(raw)
                except orjson.JSONDecodeError:  # a line cut by a crash mid-write: nothing to store
                    log.warning("a partial audit spool line was skipped")
                    continue
                if self.trail.append(item["event"], if_absent=True, **item["columns"]):
                    written += 1
            f.unlink()
        return written

    def pending(self) -> int:
        """Events waiting in spool files (of any process)."""
        if not self.folder.is_dir():
            return 0
        total = 0
        for f in self.folder.iterdir():
            try:
                total += len([x for x in f.read_bytes().splitlines() if x.strip()])
            except FileNotFoundError:  # drained meanwhile
                continue
        return total

    def _run(self) -> None:
        while not self._stop.wait(self.drain_seconds):
            self._drain_quietly()
        self._drain_quietly()

    def _drain_quietly(self) -> None:
        try:
            n = self.drain()
            if n:
                log.info("wrote %d spooled audit event(s)", n)
        except Exception as exc:  # noqa: BLE001  (the database is still busy: the files stay for the next pass)
            log.info("spooled audit events not written yet (%s)", exc.__class__.__name__)

    def start(self) -> None:
        """Drain what earlier processes left, then keep draining every ``drain_seconds``."""
        self._thread = threading.Thread(target=self._run, name="audit-spool", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)


def wait_until_drained(spool: AuditSpool, seconds: float) -> bool:
    """Block until no spooled event is left (or ``seconds`` pass); for shutdown and tests."""
    deadline = time.monotonic() + seconds
    while spool.pending():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True
