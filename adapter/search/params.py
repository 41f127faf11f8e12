"""Search parameters: which elements each FHIR search parameter indexes, and how (pure functions).

Names, types and paths follow the FHIR R4 search parameter registry (R4 §3.1.1 "Search", and each
resource's "Search Parameters" table), restricted to the resources this adapter emits. Two are this
project's own and are declared in the CapabilityStatement: ``Observation.value-quantity`` and
``Observation.interpretation`` are R4 standard names too (R4 Observation search parameters), so a
standard client can use them unchanged.

An index entry is a tuple ``(name, system, value, num, lo, hi)``:
- token: ``system`` and ``value`` (the code), e.g. ``("code", "https://…/observation-code", "mrd")``;
- reference: ``value`` = ``"Type/id"`` (any ``/_history/n`` removed);
- date: ``lo``/``hi`` = the instant range the element covers, as sortable text ``YYYY-MM-DDTHH:MM:SS.ffffff``
  (a date ``2019-04-08`` covers the whole day; R4 §3.1.1.4.5 "date" precision rules);
- quantity: ``num`` = the value (for MRD: percent of nucleated cells), ``system``/``value`` = the unit;
- string: ``value`` = the text, lower-cased.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any

Entry = tuple[str, str | None, str | None, float | None, str | None, str | None]

#: Longest value an index column holds (``search_index.system``/``value``, 255 characters). A token,
#: reference or unit longer than that is indexed as ``sha256:<hex>`` of its text, and a search value
#: goes through the same function (:func:`index_text`), so exact matching still works; a string
#: (prefix-matched) is indexed by its first 255 characters. No valid FHIR value is refused or cut
#: short in the stored resource for the sake of a column.
INDEX_LIMIT = 255


def index_text(text: str | None, limit: int = INDEX_LIMIT) -> str | None:
    """``text``, or ``"sha256:<64 hex digits>"`` of it when it is longer than ``limit`` characters."""
    if text is None or len(text) <= limit:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


#: Unicode "format" characters (category Cf: zero-width space and joiners, BOM, bidi marks) that are
#: invisible in a record number but make two spellings of it differ.
def normalize_identifier(value: str) -> str:
    """An identifier value in its one canonical form, the same on every path (ingestion, search,
    conditional create): Unicode NFKC (composes accents the NFC way and folds compatibility forms,
    e.g. full-width digits ``０１４２４０`` to ``014240``), without format characters (category Cf,
    e.g. a zero-width space), without surrounding whitespace. Unicode Standard Annex #15."""
    if value.isascii():  # NFKC leaves ASCII as it is, and no format character is ASCII
        return value.strip()
    folded = unicodedata.normalize("NFKC", value)
    return "".join(ch for ch in folded if unicodedata.category(ch) != "Cf").strip()

MIN_INSTANT = "0001-01-01T00:00:00.000000"
MAX_INSTANT = "9999-12-31T23:59:59.999999"

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,6})\d*)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


#: The time zone this server assumes for a dateTime without an offset and for a date without a
#: time (R4 §3.1.1.4.5 "date": "Where both search parameters and resource element date times do not
#: have time zones, the servers local time zone should be assumed"): UTC. Stated in the
#: CapabilityStatement (adapter/api/capability.py).
SERVER_TIME_ZONE = "UTC"


def date_range(text: str) -> tuple[str, str]:
    """The instant range ``(lo, hi)`` that a FHIR date, dateTime or instant covers, at its precision,
    as sortable UTC text ``YYYY-MM-DDTHH:MM:SS.ffffff``.

    ``"2019"`` → the whole year; ``"2019-04-08"`` → that day; ``"2019-04-08T10:00"`` → that minute.
    A value with a time zone offset is converted to UTC (``2019-04-08T10:00:00+05:30`` covers
    ``04:30:00.000000``–``04:30:00.999999`` UTC), so one instant written with ``Z``, ``+05:30`` or
    ``-06:00`` covers the same range; a value without an offset, and a date without a time, are read
    in the server's time zone, :data:`SERVER_TIME_ZONE` (R4 §3.1.1.4.5 "date", implicit ranges and
    time zones). Ranges are clamped to years 0001-9999. Raises ``ValueError`` for text that is not a
    FHIR date/dateTime/instant."""
    m = _DATE.match(text.strip())
    if not m:
        raise ValueError(f"not a FHIR date or dateTime: {text!r}")
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    year = int(y)
    if mo is None:
        return f"{y}-01-01T00:00:00.000000", f"{y}-12-31T23:59:59.999999"
    month = int(mo)
    if not 1 <= month <= 12:
        raise ValueError(f"month out of range: {text!r}")
    if d is None:
        last = calendar.monthrange(year, month)[1]
        return f"{y}-{mo}-01T00:00:00.000000", f"{y}-{mo}-{last:02d}T23:59:59.999999"
    if not 1 <= int(d) <= calendar.monthrange(year, month)[1]:
        raise ValueError(f"day out of range: {text!r}")
    if hh is None:
        return f"{y}-{mo}-{d}T00:00:00.000000", f"{y}-{mo}-{d}T23:59:59.999999"
    if int(hh) > 23 or int(mm) > 59 or (ss is not None and int(ss) > 59):
        raise ValueError(f"time out of range: {text!r}")
    if ss is None:
        lo, hi = f"{y}-{mo}-{d}T{hh}:{mm}:00.000000", f"{y}-{mo}-{d}T{hh}:{mm}:59.999999"
    elif frac is None:
        lo, hi = f"{y}-{mo}-{d}T{hh}:{mm}:{ss}.000000", f"{y}-{mo}-{d}T{hh}:{mm}:{ss}.999999"
    else:
        f = frac.ljust(6, "0")
        lo = hi = f"{y}-{mo}-{d}T{hh}:{mm}:{ss}.{f}"
    if tz in (None, "Z", "+00:00", "-00:00"):
        return lo, hi
    if int(tz[1:3]) > 14 or int(tz[4:6]) > 59:
        raise ValueError(f"time zone offset out of range: {text!r}")
    return _to_utc(lo, tz), _to_utc(hi, tz)


def _to_utc(local: str, tz: str) -> str:
    """``local`` (sortable text at offset ``tz``, ``+hh:mm``/``-hh:mm``) as sortable UTC text,
    clamped to :data:`MIN_INSTANT`/:data:`MAX_INSTANT`."""
    offset = timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])) * (1 if tz[0] == "+" else -1)
    try:
        return (datetime.fromisoformat(local) - offset).strftime("%Y-%m-%dT%H:%M:%S.%f").rjust(26, "0")
    except OverflowError:
        return MIN_INSTANT if offset > timedelta(0) else MAX_INSTANT


def utc_instant(text: str) -> str:
    """The start of a FHIR date/dateTime/instant ``text`` as a UTC instant in the store's
    ``last_updated`` form (``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``), for ``_since`` comparisons
    (R4 §3.1.0.9 history ``_since``, Bulk Data ``_since``): offsets applied, none = UTC. Raises
    ``ValueError`` as :func:`date_range`."""
    return date_range(text)[0] + "+00:00"


@dataclass(frozen=True)
class SearchParam:
    """One search parameter of one resource type: its R4 ``name``, ``type`` (token, reference, date,
    quantity, string) and the element paths it indexes (dotted; a choice element names each form,
    e.g. ``effectiveDateTime`` and ``effectivePeriod``). ``target`` limits a reference to one type
    (``patient`` → Patient)."""

    name: str
    type: str
    paths: tuple[str, ...]
    target: str | None = None
    description: str = ""

    @cached_property
    def split_paths(self) -> tuple[tuple[str, ...], ...]:
        """``paths``, each split at its dots."""
        return tuple(tuple(p.split(".")) for p in self.paths)


def _p(name: str, type_: str, *paths: str, target: str | None = None, description: str = "") -> SearchParam:
    return SearchParam(name, type_, paths, target, description)


_SUBJECT = (_p("subject", "reference", "subject", description="who the resource is about"),
            _p("patient", "reference", "subject", target="Patient", description="the Patient the resource is about"))

#: Search parameters per resource type (FHIR R4 names). ``_id`` and ``_lastUpdated`` apply to all.
PARAMS: dict[str, dict[str, SearchParam]] = {t: {p.name: p for p in ps} for t, ps in {
    "Patient": [
        _p("identifier", "token", "identifier", description="a patient identifier (site-scoped system)"),
        _p("gender", "token", "gender"),
        _p("birthdate", "date", "birthDate"),
        _p("death-date", "date", "deceasedDateTime"),
        _p("organization", "reference", "managingOrganization", target="Organization",
           description="the site that manages the record"),
    ],
    "Observation": [
        *_SUBJECT,
        _p("identifier", "token", "identifier"),
        _p("code", "token", "code"),
        _p("category", "token", "category"),
        _p("date", "date", "effectiveDateTime", "effectivePeriod"),
        _p("status", "token", "status"),
        _p("value-quantity", "quantity", "valueQuantity", description="MRD value in percent of nucleated cells"),
        _p("value-concept", "token", "valueCodeableConcept"),
        _p("interpretation", "token", "interpretation", description="POS / NEG / IND (v3-ObservationInterpretation)"),
        _p("method", "token", "method"),
        _p("part-of", "reference", "partOf", description="the infusion cycle an MRD result assesses"),
        _p("focus", "reference", "focus"),
    ],
    "MedicationAdministration": [
        *_SUBJECT,
        _p("code", "token", "medicationCodeableConcept"),
        _p("effective-time", "date", "effectiveDateTime", "effectivePeriod"),
        _p("status", "token", "status"),
        _p("part-of", "reference", "partOf"),
    ],
    "MedicationDispense": [
        *_SUBJECT,
        _p("code", "token", "medicationCodeableConcept"),
        _p("status", "token", "status"),
        _p("whenhandedover", "date", "whenHandedOver"),
    ],
    "AdverseEvent": [
        *_SUBJECT,
        _p("event", "token", "event"),
        _p("date", "date", "date"),
        _p("seriousness", "token", "seriousness"),
        _p("substance", "reference", "suspectEntity.instance", description="the suspected infusion"),
    ],
    "Procedure": [
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("date", "date", "performedDateTime", "performedPeriod"),
        _p("status", "token", "status"),
    ],
    "Condition": [
        *_SUBJECT,
        _p("code", "token", "code"),
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod"),
    ],
    "Encounter": [
        *_SUBJECT,
        _p("type", "token", "type"),
        _p("class", "token", "class"),
        _p("date", "date", "period"),
        _p("status", "token", "status"),
    ],
    "Organization": [
        _p("identifier", "token", "identifier"),
        _p("name", "string", "name"),
    ],
    "Group": [
        _p("identifier", "token", "identifier"),
        _p("type", "token", "type"),
        _p("member", "reference", "member.entity", description="a Patient in the group"),
        _p("managing-entity", "reference", "managingEntity", description="the site whose patients the group lists"),
    ],
    "ResearchStudy": [
        _p("identifier", "token", "identifier"),
        _p("status", "token", "status"),
        _p("title", "string", "title"),
    ],
    "ResearchSubject": [
        _p("identifier", "token", "identifier"),
        _p("study", "reference", "study"),
        _p("individual", "reference", "individual", description="the enrolled Patient"),
        _p("patient", "reference", "individual", target="Patient", description="the enrolled Patient"),
        _p("status", "token", "status"),
    ],
    "Subscription": [
        _p("status", "token", "status"),
        _p("type", "token", "channel.type", description="the channel type (rest-hook)"),
    ],
    "Provenance": [
        _p("target", "reference", "target", description="the resources an ingestion wrote"),
        _p("agent", "reference", "agent.who"),
        _p("recorded", "date", "recorded"),
        _p("patient", "reference", "target", target="Patient"),
    ],
}.items()}

#: Parameters that every type supports (R4 §3.1.1.5 "Parameters for all resources").
COMMON = ("_id", "_lastUpdated", "_site")  # _site: ours, the site (compartment owner) a resource belongs to


def _values(node: Any, parts: tuple[str, ...]) -> list[Any]:
    """The values at the dotted element path ``parts`` below ``node`` (a resource as JSON): every
    list on the way is flattened (FHIR JSON repeats an element as a list), absent elements give
    nothing; the leaves in document order."""
    current = [node]
    for part in parts:
        found: list[Any] = []
        for n in current:
            if isinstance(n, dict):
                _flatten(n.get(part), found)
        current = found
        if not current:
            break
    return current


def _flatten(value: Any, out: list[Any]) -> None:
    if value is None:
        return
    if isinstance(value, list):
        for item in value:
            _flatten(item, out)
    else:
        out.append(value)


def _tokens(v: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(v, str):  # code
        yield None, v
    elif isinstance(v, dict):
        if "coding" in v:  # CodeableConcept
            for c in v.get("coding") or []:
                if c.get("code"):
                    yield c.get("system"), c["code"]
        elif isinstance(v.get("value"), str):  # Identifier
            yield v.get("system"), v["value"]
        elif "code" in v:  # Coding
            yield v.get("system"), v["code"]


def reference_key(ref: str) -> str:
    """``"Type/id"`` of a literal relative reference, without any ``/_history/n``."""
    parts = ref.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 else ref


def _dates(v: Any) -> Iterator[tuple[str, str]]:
    if isinstance(v, str):
        yield date_range(v)
    elif isinstance(v, dict) and ("start" in v or "end" in v):  # Period
        lo = date_range(v["start"])[0] if v.get("start") else MIN_INSTANT
        hi = date_range(v["end"])[1] if v.get("end") else MAX_INSTANT
        yield lo, hi


_EXTRACT: dict[str, Callable[[SearchParam, Any], Iterator[Entry]]] = {}


def _extractor(kind: str) -> Callable[[Callable[[SearchParam, Any], Iterator[Entry]]], Callable[[SearchParam, Any], Iterator[Entry]]]:
    def deco(fn: Callable[[SearchParam, Any], Iterator[Entry]]) -> Callable[[SearchParam, Any], Iterator[Entry]]:
        _EXTRACT[kind] = fn
        return fn
    return deco


@_extractor("token")
def _token_entries(p: SearchParam, v: Any) -> Iterator[Entry]:
    for system, code in _tokens(v):
        if p.name == "identifier":
            code = normalize_identifier(code)
        yield p.name, index_text(system), index_text(code), None, None, None


@_extractor("reference")
def _reference_entries(p: SearchParam, v: Any) -> Iterator[Entry]:
    ref = v.get("reference") if isinstance(v, dict) else None
    if isinstance(ref, str) and "/" in ref:
        key = reference_key(ref)
        if p.target is None or key.startswith(p.target + "/"):
            yield p.name, None, index_text(key), None, None, None


@_extractor("date")
def _date_entries(p: SearchParam, v: Any) -> Iterator[Entry]:
    for lo, hi in _dates(v):
        yield p.name, None, None, None, lo, hi


@_extractor("quantity")
def _quantity_entries(p: SearchParam, v: Any) -> Iterator[Entry]:
    if isinstance(v, dict) and isinstance(v.get("value"), int | float) and not isinstance(v.get("value"), bool):
        yield p.name, index_text(v.get("system")), index_text(v.get("code") or v.get("unit")), float(v["value"]), None, None


def fold_text(text: str) -> str:
    """``text`` as string search compares it: case- and accent-insensitive (R4 §3.1.1.4.7
    "string": "a search against a string ... is case- and accent-insensitive"): Unicode NFKD,
    combining marks (category Mn) removed, case-folded, so ``José`` and ``JOSE`` are ``jose``."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if unicodedata.category(ch) != "Mn").casefold()


@_extractor("string")
def _string_entries(p: SearchParam, v: Any) -> Iterator[Entry]:
    if isinstance(v, str):
        yield p.name, None, fold_text(v)[:INDEX_LIMIT], None, None, None


def index_entries(resource: dict[str, Any]) -> list[Entry]:
    """Every search index entry of a resource (see the module docstring for the tuple's shape).
    Values that cannot be indexed (a malformed date in a resource that was stored anyway) are
    skipped; stored resources have passed the R4 schema, so that does not happen for ours."""
    out: list[Entry] = []
    for p in PARAMS.get(resource.get("resourceType", ""), {}).values():
        fn = _EXTRACT[p.type]
        for parts in p.split_paths:
            for v in _values(resource, parts):
                try:
                    out.extend(fn(p, v))
                except (ValueError, OverflowError):  # a value no index column can hold (1e400): not indexed
                    continue
    return out
