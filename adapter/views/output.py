"""View rows rendered as the SQL on FHIR output formats (``$viewdefinition-run`` ``_format``):
``json`` (an array of objects), ``ndjson``, ``csv`` (RFC 4180, optional header) and ``parquet``
(Apache Parquet through pyarrow, columns typed from the ViewDefinition's column types).
Pure functions: rows and columns in, bytes out."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

import orjson

MEDIA_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv",
               "parquet": "application/vnd.apache.parquet"}
_INTEGER = ("integer", "positiveInt", "unsignedInt", "integer64")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return str(value)


def _arrow_type(column: dict[str, Any]) -> Any:
    import pyarrow as pa

    fhir = column.get("type") or "string"
    base = pa.bool_() if fhir == "boolean" else pa.int64() if fhir in _INTEGER else pa.float64() if fhir == "decimal" \
        else pa.string()
    return pa.list_(base) if column.get("collection") else base


def _arrow_value(value: Any, column: dict[str, Any]) -> Any:
    """A JSON value as the column's Arrow type: objects (a complex element read without a type)
    become their JSON text in string columns."""
    if value is None:
        return None
    fhir = column.get("type") or "string"
    if isinstance(value, list):
        return [_arrow_value(v, {**column, "collection": False}) for v in value]
    if fhir in _INTEGER or fhir in ("boolean", "decimal"):
        return value
    return orjson.dumps(value).decode() if isinstance(value, dict) else str(value)


def render(rows: Iterable[dict[str, Any]], columns: list[dict[str, Any]], fmt: str, header: bool = True) -> bytes:
    """``rows`` (column name -> JSON value) in ``fmt`` (a key of :data:`MEDIA_TYPES`), columns in
    the view's order (``columns``: ``{"name", "type", "collection"}``). CSV writes a collection or an
    object as JSON text and booleans as ``true``/``false``. Raises ValueError for an unknown
    format, or a value that does not fit its column's type in Parquet (e.g. text in an integer
    column), naming the column."""
    names = [c["name"] for c in columns]
    if fmt == "json":
        return orjson.dumps(list(rows))
    if fmt == "ndjson":
        return b"".join(orjson.dumps(r) + b"\n" for r in rows)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\r\n")
        if header:
            w.writerow(names)
        for r in rows:
            w.writerow([_cell(r.get(n)) for n in names])
        return buf.getvalue().encode()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        data = list(rows)
        arrays = []
        for c in columns:
            try:
                arrays.append(pa.array([_arrow_value(r.get(c["name"]), c) for r in data], type=_arrow_type(c)))
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise ValueError(f"column {c['name']!r} ({c.get('type') or 'string'}): {exc}") from None
        table = pa.Table.from_arrays(arrays, names=names)
        sink = io.BytesIO()
        pq.write_table(table, sink)
        return sink.getvalue()
    raise ValueError(f"unknown output format {fmt!r}; one of {', '.join(MEDIA_TYPES)}")
