"""Bulk Data Access STU2 kick-off parameters (https://hl7.org/fhir/uv/bulkdata/STU2/export.html),
parsed and checked before a job is accepted. Pure: no I/O.

Supported: ``_outputFormat`` (``application/fhir+ndjson`` and its abbreviations ``application/ndjson``
and ``ndjson``), ``_type``, ``_since``, ``_typeFilter`` (a search on a type, with the search
parameters of our FHIR API), and ours, ``_deidentify``. Anything else (``_elements``, ``patient``,
``includeAssociatedData``, ``_until``…) is refused with the list of what is supported, unless the
client sent ``Prefer: handling=lenient``, when it is ignored and named in the manifest's
``extension`` (STU2 §Query Parameters: a server "SHALL return an error" for an unsupported parameter
unless lenient handling was asked for).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from adapter.search.params import PARAMS
from adapter.search.query import RESULT_PARAMS, SearchError, parse

OUTPUT_FORMATS = ("application/fhir+ndjson", "application/ndjson", "ndjson")
SUPPORTED = ("_outputFormat", "_type", "_since", "_typeFilter", "_deidentify")


class ExportRequestError(ValueError):
    """A kick-off parameter is unsupported or malformed (answered 400 with an OperationOutcome)."""


@dataclass(frozen=True)
class ExportRequest:
    """What an export holds. ``level``: ``system`` (``/$export``), ``patient`` (``/Patient/$export``,
    every Patient compartment) or ``group`` (``/Group/{id}/$export``, its members' compartments).
    ``types``: resource types asked for (``None``: all). ``since``: a FHIR instant. ``type_filters``:
    type -> the query strings of its ``_typeFilter`` values (OR-ed). ``ignored``: unsupported
    parameters passed over under lenient handling."""

    level: str
    group_id: str | None = None
    types: list[str] | None = None
    since: str | None = None
    type_filters: dict[str, list[str]] = field(default_factory=dict)
    deidentify: bool = False
    ignored: list[str] = field(default_factory=list)
    #: Only this site's resources (the export of a site-bound client, adapter/auth/policy.py).
    site: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportRequest:
        return cls(**data)


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in ("true", "1"):
        return True
    if raw.lower() in ("false", "0"):
        return False
    raise ExportRequestError(f"{name}: '{raw[:40]}' is not true or false")


def parse_kickoff(level: str, items: list[tuple[str, str]], *, group_id: str | None = None,
                  lenient: bool = False, force_deidentify: bool = False) -> ExportRequest:
    """Parse kick-off parameters given as (name, value) pairs, from the query string (GET) or a
    Parameters resource (POST, see :func:`parameters_items`). ``_type`` and ``_typeFilter`` may
    repeat or hold comma-separated lists.

    Raises:
        ExportRequestError: an unsupported output format, an unknown type, a malformed ``_since``,
            a ``_typeFilter`` whose type is not exported or whose search is not valid here, or an
            unsupported parameter without lenient handling.
    """
    types: list[str] = []
    since = None
    filters: dict[str, list[str]] = {}
    deid = force_deidentify
    ignored: list[str] = []
    for name, raw in items:
        if name == "_outputFormat":
            if raw not in OUTPUT_FORMATS:
                raise ExportRequestError(f"_outputFormat '{raw[:60]}' is not supported; use {OUTPUT_FORMATS[0]}")
        elif name == "_type":
            for t in filter(None, (x.strip() for x in raw.split(","))):
                if t not in PARAMS:
                    raise ExportRequestError(f"_type: '{t[:40]}' is not a resource type held here "
                                             f"(supported: {', '.join(sorted(PARAMS))})")
                if t not in types:
                    types.append(t)
        elif name == "_since":
            try:
                when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise ExportRequestError(f"_since: '{raw[:40]}' is not a FHIR instant") from None
            if when.tzinfo is None:
                raise ExportRequestError(f"_since: '{raw[:40]}' has no time zone (a FHIR instant needs one)")
            # compared with meta.lastUpdated, stored in UTC: the instant, whatever offset it is written with
            since = when.astimezone(UTC).isoformat(timespec="microseconds")
        elif name == "_typeFilter":
            # a comma inside a search value ORs values; one before "Type?" starts the next filter
            for f in filter(None, (x.strip() for x in re.split(r",(?=[A-Z][A-Za-z]+\?)", raw))):
                rtype, _, query = f.partition("?")
                check_type_filter(rtype, query)
                filters.setdefault(rtype, []).append(query)
        elif name == "_deidentify":
            deid = _bool(name, raw) or force_deidentify
        elif lenient:
            ignored.append(name)
        else:
            raise ExportRequestError(f"parameter '{name[:40]}' is not supported by this server's $export "
                                     f"(supported: {', '.join(SUPPORTED)}); send Prefer: handling=lenient to ignore it")
    for rtype in filters:
        if types and rtype not in types:
            raise ExportRequestError(f"_typeFilter on {rtype}, which _type does not include")
    return ExportRequest(level, group_id, types or None, since, filters, deid, ignored)


def check_type_filter(rtype: str, query: str) -> None:
    """A ``_typeFilter`` value is ``Type?search``; the search must be valid on our FHIR API and use
    no result parameters (``_count``, ``_sort``, ``_include``…). Raises ExportRequestError."""
    if not rtype or not query:
        raise ExportRequestError(f"_typeFilter '{(rtype + '?' + query)[:60]}' must be Type?search-parameters")
    items = parse_qsl(query, keep_blank_values=True)
    if any(k.split(":")[0] in RESULT_PARAMS for k, _ in items):
        raise ExportRequestError(f"_typeFilter on {rtype}: result parameters ({', '.join(RESULT_PARAMS)}) are not allowed")
    try:
        parse(rtype, items)
    except SearchError as exc:
        raise ExportRequestError(f"_typeFilter: {exc}") from None


def parameters_items(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) pairs of a Parameters resource (POST kick-off): each ``parameter`` with a
    ``valueString``, ``valueCode``, ``valueInstant``, ``valueBoolean`` … Raises ExportRequestError
    for anything else (e.g. a ``patient`` reference, which this server does not support)."""
    if body.get("resourceType") != "Parameters":
        raise ExportRequestError("a POST kick-off body must be a Parameters resource")
    out = []
    for p in body.get("parameter") or []:
        name = p.get("name")
        values = [v for k, v in p.items() if k.startswith("value")]
        if not isinstance(name, str) or len(values) != 1 or isinstance(values[0], dict | list):
            raise ExportRequestError(f"parameter '{str(name)[:40]}' needs one primitive value[x]")
        v = values[0]
        out.append((name, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return out
