"""Readers: file -> :class:`Row` objects that keep their file, sheet and row number."""

from adapter.readers import csv as _csv  # noqa: F401  (registers the reader)
from adapter.readers import hl7v2 as _hl7v2  # noqa: F401
from adapter.readers import redcap as _redcap  # noqa: F401
from adapter.readers import xlsx as _xlsx  # noqa: F401
from adapter.readers.base import Reader, ReadStats, Row, reader_for, reader_formats

__all__ = ["Reader", "ReadStats", "Row", "reader_for", "reader_formats"]
