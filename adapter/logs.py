"""Structured logs: JSON lines on stderr (structlog over the standard library's logging).

Every line has ``timestamp`` (UTC, ISO 8601), ``level``, ``logger`` and ``event``; lines written
while a request is served also have its ``request_id`` (adapter/api/ops.py). One ``request`` line
per request gives method, path (never the query string: search parameters can hold record
numbers), status and duration. Nothing the adapter logs holds a patient name or a local
identifier; tests/test_ops.py checks the whole log of a served session for them.
"""

from __future__ import annotations

import logging

import structlog

_SHARED = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "INFO") -> None:
    """Send every logger (the adapter's, uvicorn's) through one JSON formatter on stderr."""
    structlog.configure(processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
                        logger_factory=structlog.stdlib.LoggerFactory(), cache_logger_on_first_use=True)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _drop_color,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()])
    handler = logging.StreamHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("alembic").setLevel(logging.WARNING)  # readiness checks would log the migration context


def _drop_color(_: object, __: str, event: dict[str, object]) -> dict[str, object]:
    event.pop("color_message", None)  # uvicorn's terminal-coloured copy of the message
    return event
