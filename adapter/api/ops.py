"""Running it as a service: health checks, Prometheus metrics and request ids.

* ``GET /health/live``: the process answers (200).
* ``GET /health/ready``: the database answers and its schema is at the newest migration (200);
  otherwise 503 with the failed check (a container orchestrator stops routing traffic).
* ``GET /metrics`` (Prometheus text format):
  - ``http_requests_total``, ``http_request_duration_seconds`` (histogram), per route template and
    status class (prometheus-fastapi-instrumentator);
  - ``adapter_rows_read_total`` / ``_mapped_total`` / ``_rejected_total`` per site (every committed
    ingestion, from the ``ingestions`` table: CLI and API ingestions, every process);
  - ``adapter_subscription_backlog`` (events not delivered yet) and
    ``adapter_subscription_delivery_seconds`` (histogram: commit to delivery);
  - ``adapter_exports_running`` (Bulk Data jobs accepted or in progress).
  Metrics carry site codes only, never a patient or record number.
* :class:`RequestIdMiddleware`: each request gets an id (the caller's ``X-Request-ID`` when it is a
  safe token, else a new UUID), bound to every log line of the request (structlog context) and
  echoed in the response's ``X-Request-ID``.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_fastapi_instrumentator import Instrumentator
from sqlalchemy import func, select, text

from adapter.store import Store
from adapter.store.schema import export_jobs, ingestions, subscription_events

_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
access = logging.getLogger("adapter.access")


class RequestIdMiddleware:
    """See the module docstring (a plain ASGI middleware, outermost)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = given if _SAFE_ID.match(given) else str(uuid.uuid4())
        scope["adapter.request_id"] = rid

        status = {"code": 500}
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=rid):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                access.info("request", extra={"method": scope["method"], "path": scope["path"], "status": status["code"],
                                              "duration_ms": round((time.perf_counter() - started) * 1000, 1)})


class _StoreCollector:
    """Collects the database-backed metrics at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Any:
        read = CounterMetricFamily("adapter_rows_read", "Rows read from posted exports, per site", labels=["site"])
        mapped = CounterMetricFamily("adapter_rows_mapped", "Rows mapped to FHIR resources, per site", labels=["site"])
        rejected = CounterMetricFamily("adapter_rows_rejected", "Rows rejected with row issues, per site", labels=["site"])
        backlog = GaugeMetricFamily("adapter_subscription_backlog", "Subscription events not delivered yet")
        running = GaugeMetricFamily("adapter_exports_running", "Bulk Data exports accepted or in progress")
        with self.store.engine.connect() as conn:
            for site, r, m, x in conn.execute(select(ingestions.c.site, func.sum(ingestions.c.rows_read),
                                                     func.sum(ingestions.c.rows_mapped), func.sum(ingestions.c.rows_rejected))
                                              .group_by(ingestions.c.site).order_by(ingestions.c.site)):
                read.add_metric([site], float(r or 0))
                mapped.add_metric([site], float(m or 0))
                rejected.add_metric([site], float(x or 0))
            backlog.add_metric([], float(conn.execute(select(func.count()).select_from(subscription_events)
                                                      .where(subscription_events.c.delivered.is_(None))).scalar() or 0))
            running.add_metric([], float(conn.execute(select(func.count()).select_from(export_jobs).where(
                export_jobs.c.status.in_(("accepted", "in-progress")))).scalar() or 0))
        yield from (read, mapped, rejected, backlog, running)


def add_ops(app: FastAPI, store: Store) -> Histogram:
    """Register health, metrics and the request-id middleware; returns the delivery-latency
    histogram for the subscription worker to observe. Each app has its own metrics registry."""
    registry = CollectorRegistry()
    app.state.metrics_registry = registry  # the MLLP listener inside `adapter serve` adds its metrics here
    registry.register(_StoreCollector(store))  # type: ignore[arg-type]
    delivery = Histogram("adapter_subscription_delivery_seconds", "From an event's commit to its delivery",
                         buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300), registry=registry)
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(
        app, endpoint="/metrics", include_in_schema=False)

    @app.get("/health/live", response_class=JSONResponse, summary="Liveness: the process answers")
    def live() -> JSONResponse:
        return JSONResponse({"status": "pass"})

    @app.get("/health/ready", response_class=JSONResponse, summary="Readiness: database reachable, schema current")
    def ready() -> JSONResponse:
        from alembic.script import ScriptDirectory

        from adapter.store.db import MIGRATIONS

        checks: dict[str, str] = {}
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            checks["database"] = "pass"
            head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
            current = store.schema_revision()
            checks["migrations"] = "pass" if current == head else f"fail: at {current}, newest is {head}"
        except Exception as exc:  # noqa: BLE001  (any failure means not ready; the reason is reported)
            checks.setdefault("database", f"fail: {exc.__class__.__name__}")
        ok = all(v == "pass" for v in checks.values())
        return JSONResponse({"status": "pass" if ok else "fail", "checks": checks,
                             "time": datetime.now(UTC).isoformat(timespec="seconds")}, status_code=200 if ok else 503)

    app.add_middleware(RequestIdMiddleware)
    return delivery
