"""Parse FHIR search parameters into a :class:`Query` (pure; the store turns it into SQL).

Rules: FHIR R4 §3.1.1 "Search". Repeated parameters are AND, comma-separated values are OR
(§3.1.1.3). Prefixes ``eq ne gt lt ge le sa eb`` for date and quantity (§3.1.1.4.1); token forms
``code``, ``system|code``, ``|code`` and ``system|`` (§3.1.1.4.4); a number's implicit precision
range for ``eq`` (``0.01`` matches [0.005, 0.015), §3.1.1.4.2). Unknown parameters, modifiers and
malformed values raise :class:`SearchError`, unless the client asked for ``Prefer: handling=lenient``,
in which case unknown parameters are ignored (§3.1.1.3.1 "handling").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from adapter.search.params import (
    COMMON,
    INDEX_LIMIT,
    PARAMS,
    SearchParam,
    date_range,
    fold_text,
    index_text,
    normalize_identifier,
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
RESULT_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_total", "_format", "_snapshot", "_offset",
                 "_elements", "_pretty", "_totalMethod")
DEFAULT_COUNT = 20
MAX_COUNT = 1000
#: Largest ``_offset`` (a page that far is past any result here; a larger number would overflow
#: the database's integer).
MAX_OFFSET = 2**31 - 1
#: Control characters no FHIR string may hold (R4 §2.24.0.1 string: "SHOULD NOT contain Unicode
#: character points below 32, except for u0009, u000D and u000A"; XML cannot carry them at all).
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class SearchError(ValueError):
    """A search request that cannot be run; the message names the parameter and the problem
    (returned as an OperationOutcome with HTTP 400)."""


@dataclass(frozen=True)
class Token:
    """``system`` None = any system; ``""`` = no system. ``code`` None = any code of the system."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class Reference:
    key: str  # "Type/id", or "*/id" when the type is not given


@dataclass(frozen=True)
class DateRange:
    prefix: str
    lo: str
    hi: str


@dataclass(frozen=True)
class Number:
    prefix: str
    value: float
    lo: float
    hi: float
    system: str | None
    unit: str | None


@dataclass(frozen=True)
class Text:
    value: str


@dataclass(frozen=True)
class Clause:
    """One search parameter occurrence: ``name`` and its OR-ed ``values``."""

    name: str
    kind: str  # token | reference | date | quantity | string | id | lastUpdated
    values: tuple[Token | Reference | DateRange | Number | Text | str, ...]


@dataclass(frozen=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude`` (§3.1.1.5.4)."""

    source: str
    param: str
    target: str | None


@dataclass
class Query:
    """A parsed search on one resource type."""

    type: str
    clauses: list[Clause] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (param, descending)
    include: list[Include] = field(default_factory=list)
    revinclude: list[Include] = field(default_factory=list)
    summary_count: bool = False
    summary: str | None = None  # _summary true | text | data (R4 §3.1.1.5.8); count is summary_count
    elements: tuple[str, ...] | None = None  # _elements (R4 §3.1.1.5.9)
    snapshot: str | None = None
    ignored: list[str] = field(default_factory=list)
    params: list[tuple[str, str]] = field(default_factory=list)  # the search parameters as understood


def _split_prefix(v: str) -> tuple[str, str]:
    if len(v) > 2 and v[:2] in PREFIXES and not v[:2].isdigit() and (v[2].isdigit() or v[2] in "-."):
        return v[:2], v[2:]
    return "eq", v


def _parse_value(p: SearchParam | None, kind: str, raw: str, name: str) -> Token | Reference | DateRange | Number | Text | str:
    if kind in ("id", "site"):
        return raw
    if kind in ("date", "lastUpdated"):
        prefix, text = _split_prefix(raw)
        try:
            lo, hi = date_range(text)
        except ValueError:
            raise SearchError(f"{name}: '{raw}' is not a FHIR date (expected [prefix]YYYY[-MM[-DD[Thh:mm[:ss]]]])") from None
        return DateRange(prefix, lo, hi)
    if kind == "token":
        system, code = raw.split("|", 1) if "|" in raw else (None, raw)
        if code and p is not None and p.name == "identifier":
            code = normalize_identifier(code)  # as the index holds it (adapter/search/params.py)
        return Token(index_text(system) if system else system, index_text(code) or None)
    if kind == "reference":
        if raw.startswith(("http://", "https://")):
            raise SearchError(f"{name}: absolute references are not stored here; use Type/id")
        if "/" in raw:
            return Reference(index_text("/".join(raw.split("/")[:2])) or "")
        return Reference(index_text(f"{p.target}/{raw}") or "" if p and p.target else f"*/{raw}")
    if kind == "quantity":
        num, _, rest = raw.partition("|")
        prefix, num = _split_prefix(num)
        try:
            d = Decimal(num)
        except InvalidOperation:
            raise SearchError(f"{name}: '{raw}' is not a quantity (expected [prefix]number[|system|code])") from None
        exponent = d.as_tuple().exponent
        if not d.is_finite() or not isinstance(exponent, int) or abs(exponent) > 300 or abs(d.adjusted()) > 300:
            raise SearchError(f"{name}: '{raw[:40]}' is not a number this server can compare (finite, within 1e±300)")
        half = Decimal(1).scaleb(exponent) / 2
        system, _, unit = rest.partition("|") if rest else ("", "", "")
        return Number(prefix, float(d), float(d - half), float(d + half), index_text(system) or None, index_text(unit) or None)
    if kind == "string":
        return Text(fold_text(raw)[:INDEX_LIMIT])
    raise SearchError(f"{name}: unsupported parameter type {kind}")


_INCLUDE = re.compile(r"^([A-Z][A-Za-z]+):([a-z][a-z-]*)(?::([A-Z][A-Za-z]+))?$")


def _parse_include(name: str, raw: str, rtype: str, rev: bool) -> Include:
    m = _INCLUDE.match(raw)
    if not m:
        raise SearchError(f"{name}: '{raw}' is not SourceType:parameter[:TargetType]")
    src, param, target = m.groups()
    p = PARAMS.get(src, {}).get(param)
    if p is None or p.type != "reference":
        raise SearchError(f"{name}: {src} has no reference search parameter '{param}'")
    if not rev and src != rtype:
        raise SearchError(f"{name}: the source type of _include must be the searched type {rtype}, not {src}")
    return Include(src, param, target)


def parse(rtype: str, items: list[tuple[str, str]], lenient: bool = False, base: str | None = None) -> Query:
    """Parse ``items`` (query parameters in order, as pairs) for a search on ``rtype``. ``base``:
    this server's base URL; a reference value under it (``http://host/fhir/Patient/x``) is read as
    the relative reference ``Patient/x`` (R4 §3.1.1.4.6).

    Raises :class:`SearchError` for an unknown type, parameter or modifier, or a malformed value."""
    if rtype not in PARAMS:
        raise SearchError(f"resource type '{rtype}' is not supported here (supported: {', '.join(sorted(PARAMS))})")
    q = Query(rtype)
    known = PARAMS[rtype]
    for key, raw in items:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            _result_param(q, name, raw, rtype)
            continue
        if name not in known and name not in COMMON:
            if lenient:
                q.ignored.append(key)
                continue
            supported = ", ".join([*COMMON, *sorted(known)])
            raise SearchError(f"unknown search parameter '{name}' for {rtype} (supported: {supported})")
        p = known.get(name)
        if raw == "":
            raise SearchError(f"{name}: empty value")
        if CONTROL.search(raw):
            raise SearchError(f"{name}: the value holds a control character")
        kind = {"_id": "id", "_lastUpdated": "lastUpdated", "_site": "site"}.get(name) or p.type  # type: ignore[union-attr]
        texts = raw.split(",")
        if base and kind == "reference":  # an absolute reference to this server is its relative reference
            texts = [v[len(base) + 1:] if v.startswith(base + "/") else v for v in texts]
        if modifier:
            if kind != "reference" or modifier not in PARAMS or (p and p.target not in (None, modifier)):
                raise SearchError(f"{key}: the modifier ':{modifier}' is not supported (reference parameters take a "
                                  "resource type held here, e.g. subject:Patient)")
            # R4 §3.1.1.4.6 "reference" :[type]: the id alone, or Type/id of that type
            texts = [v if "/" in v else f"{modifier}/{v}" for v in texts]
            if any(not v.startswith(modifier + "/") for v in texts):
                raise SearchError(f"{key}: a value names another type than {modifier}")
        values = tuple(_parse_value(p, kind, v, name) for v in texts)
        for v in values:
            if isinstance(v, DateRange | Number) and v.prefix not in PREFIXES:
                raise SearchError(f"{name}: unknown prefix {v.prefix}")
        q.clauses.append(Clause(name, kind, values))
        q.params.append((key, raw))
    return q


def _result_param(q: Query, name: str, raw: str, rtype: str) -> None:
    if name == "_count":
        if not raw.isascii() or not raw.isdigit():
            raise SearchError(f"_count: '{raw}' is not a non-negative integer")
        q.count = min(int(raw), MAX_COUNT)
    elif name == "_offset":
        if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_OFFSET:
            raise SearchError(f"_offset: '{raw[:40]}' is not a whole number from 0 to {MAX_OFFSET}")
        q.offset = int(raw)
    elif name == "_snapshot":
        try:
            date_range(raw)
        except ValueError:
            raise SearchError(f"_snapshot: '{raw}' is not an instant") from None
        q.snapshot = raw
    elif name == "_sort":
        for s in raw.split(","):
            desc = s.startswith("-")
            pname = s.lstrip("-")
            p = PARAMS[rtype].get(pname)
            if pname not in ("_id", "_lastUpdated") and (p is None or p.type != "date"):
                raise SearchError(f"_sort: cannot sort {rtype} by '{pname}' (supported: _id, _lastUpdated and date parameters)")
            q.sort.append((pname, desc))
    elif name == "_include":
        q.include.append(_parse_include(name, raw, rtype, rev=False))
    elif name == "_revinclude":
        inc = _parse_include(name, raw, rtype, rev=True)
        q.revinclude.append(inc)
    elif name == "_summary":
        if raw == "count":
            q.summary_count = True
        elif raw in ("true", "text", "data"):
            q.summary = raw
        elif raw != "false":
            raise SearchError(f"_summary: '{raw[:40]}' is not true, text, data, count or false")
    elif name == "_total":
        if raw not in ("none", "estimate", "accurate"):
            raise SearchError(f"_total: '{raw}' is not none, estimate or accurate")
    elif name == "_format":
        if raw not in ("json", "application/fhir+json", "application/json"):
            raise SearchError(f"_format: only JSON is served, not '{raw}'")
    elif name == "_pretty":  # R4 §3.1.0.1.8 general parameter: a presentation hint this server may ignore
        if raw not in ("true", "false"):
            raise SearchError(f"_pretty: '{raw}' is not true or false")
    elif name == "_elements":
        from adapter.api.subsetting import element_names

        names = tuple(e.strip() for e in raw.split(",") if e.strip())
        known = element_names(rtype)
        bad = [e for e in names if e not in known]
        if not names or bad:
            raise SearchError(f"_elements: {', '.join(bad)[:80] or '(none)'} is not a top-level element of {rtype}")
        q.elements = (*(q.elements or ()), *names)
    elif name == "_totalMethod":  # fhirpy's count() (Aidbox's name for _total): every total here is exact
        if raw not in ("count", "estimate", "none"):
            raise SearchError(f"_totalMethod: '{raw[:40]}' is not count, estimate or none")
