"""What leaves a site: study pseudonyms, de-identified resources and small-cell suppression (pure
functions; the API and the CLI apply them to coordinator-facing outputs).

- **Pseudonym** (SMART Cumulus's design, "de-identification": a keyed hash of the local id): the
  study pseudonym of a patient is ``HMAC-SHA256(key, "<site>|<local identifier>")`` in hex. The key
  is a secret of the network (``ADAPTER_PSEUDONYM_KEY``); without it no pseudonym can be made and
  de-identified output is refused. The same record number at two sites gives two pseudonyms.
- **De-identified resource**: only the elements of an allow-list (:data:`ALLOWED`, per type; any
  other element, e.g. a ``performer`` naming a clinician, is dropped, and so are ``note`` and
  ``text``, which are never on it). The Patient keeps only its pseudonym as identifier (system
  :data:`PSEUDONYM_SYSTEM`) and a birth date cut to year-month or year; every other resource loses
  its site-scoped identifiers (e.g. lab accession numbers); contained resources are de-identified
  the same way. References keep the resource ids, which are already keyed hashes (``ADAPTER_ID_KEY``).
  With ``shift_days`` > 0, every date of a patient's resources moves by the same number of days,
  a keyed hash of the patient id in [-shift_days, +shift_days] (never 0), so intervals within a
  patient (the outcome analyses) are kept while calendar dates no longer match hospital records.
  The local identifier stays stored: a site's own reads are unchanged.
- **Small-cell suppression** of aggregate reports: a count from 1 to threshold − 1 is shown as
  ``"<threshold"`` (zero is shown: it discloses nobody), and the rate and interval computed from it
  are withheld; a summary (median, range …) of fewer than threshold patients keeps only its ``n``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import re
from datetime import date, timedelta
from typing import Any, Literal

from adapter.config import CANONICAL
from adapter.errors import ConfigError

PSEUDONYM_SYSTEM = f"{CANONICAL}/sid/study-pseudonym"
SITE_SID = f"{CANONICAL}/sid/"


class PseudonymKeyMissing(ConfigError):
    """De-identified output was asked for but ``ADAPTER_PSEUDONYM_KEY`` is not set."""


def pseudonym(key: str | None, site: str, local_id: str) -> str:
    """The study pseudonym of a site's patient: 64 hex digits of HMAC-SHA256(key, "site|local id").
    Raises :class:`PseudonymKeyMissing` when ``key`` is empty: a pseudonym without a secret could be
    recomputed by anyone who knows the record number."""
    if not key:
        raise PseudonymKeyMissing("pseudonyms need a secret: set ADAPTER_PSEUDONYM_KEY")
    return hmac.new(key.encode(), f"{site}|{local_id}".encode(), hashlib.sha256).hexdigest()


def _site_of(patient: dict[str, Any]) -> str:
    ref = (patient.get("managingOrganization") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Organization/") else ""


def _local_id(patient: dict[str, Any], site: str) -> str | None:
    system = f"{SITE_SID}{site}/patient"
    return next((i.get("value") for i in patient.get("identifier", []) if i.get("system") == system), None)


def truncate_date(value: str, precision: Literal["year-month", "year"]) -> str:
    """A FHIR date or dateTime cut to ``YYYY-MM`` or ``YYYY`` (FHIR R4 §2.24.0.1 allows partial dates)."""
    return value[:7] if precision == "year-month" else value[:4]


#: Top-level elements a de-identified resource may keep, per type (every element our mapping modules
#: write, except free text). A type not listed keeps only ``resourceType``, ``id`` and ``meta``.
_BASE = {"resourceType", "id", "meta", "extension"}
ALLOWED: dict[str, set[str]] = {t: _BASE | set(e.split()) for t, e in {
    "Patient": "identifier gender birthDate deceasedBoolean deceasedDateTime managingOrganization",
    "Observation": "identifier status category code subject focus partOf effectiveDateTime effectivePeriod "
                   "valueQuantity valueCodeableConcept dataAbsentReason interpretation method specimen "
                   "referenceRange component contained",
    "Specimen": "type subject",
    "MedicationAdministration": "status category medicationCodeableConcept subject effectiveDateTime effectivePeriod "
                                "partOf dosage",
    "MedicationDispense": "status medicationCodeableConcept subject quantity whenHandedOver",
    "AdverseEvent": "actuality event subject date seriousness outcome suspectEntity",
    "Procedure": "status code subject performedDateTime performedPeriod usedCode",
    "Condition": "category code subject onsetDateTime verificationStatus clinicalStatus",
    "Encounter": "status class type subject period serviceProvider",
    "Organization": "identifier active name address",
    "Group": "identifier type actual name quantity managingEntity member",
    "ResearchStudy": "identifier title status",
    "ResearchSubject": "status study individual",
}.items()}

_DATE = re.compile(r"^(\d{4})(-\d{2})?(-\d{2})?(T.*)?$")
_DATE_KEYS = {"birthDate", "deceasedDateTime", "effectiveDateTime", "start", "end", "date", "onsetDateTime",
              "performedDateTime", "whenHandedOver", "recorded", "issued", "abatementDateTime", "recordedDate"}


def date_shift(key: str, patient_id: str, shift_days: int) -> int:
    """The patient's date offset in days: HMAC-SHA256(key, "date-shift|<patient id>") mapped onto
    [-shift_days, -1] or [1, shift_days]."""
    n = int.from_bytes(hmac.new(key.encode(), f"date-shift|{patient_id}".encode(), hashlib.sha256).digest()[:8], "big")
    k = n % (2 * shift_days) - shift_days
    return k if k < 0 else k + 1


def _shift_value(value: str, days: int) -> str:
    """A FHIR date/dateTime moved by ``days``, at its own precision (a year or year-month moves
    with its first day)."""
    m = _DATE.match(value)
    if not m:
        return value
    y, mo, d, rest = int(m[1]), int(m[2][1:]) if m[2] else 1, int(m[3][1:]) if m[3] else 1, m[4] or ""
    moved = date(y, mo, d) + timedelta(days=days)
    if not m[2]:
        return f"{moved.year:04d}"
    if not m[3]:
        return f"{moved.year:04d}-{moved.month:02d}"
    return moved.isoformat() + rest


def _shift_dates(node: Any, days: int) -> Any:
    if isinstance(node, dict):
        return {k: (_shift_value(v, days) if k in _DATE_KEYS and isinstance(v, str) else _shift_dates(v, days))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_shift_dates(v, days) for v in node]
    return node


def _patient_of(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    ref = (resource.get("subject") or resource.get("patient") or resource.get("individual") or {}).get("reference", "")
    return ref.split("/", 1)[1] if isinstance(ref, str) and ref.startswith("Patient/") else None


def deidentify(resource: dict[str, Any], key: str | None,
               birth_date: Literal["year-month", "year"] = "year-month", shift_days: int = 0) -> dict[str, Any]:
    """A de-identified copy of one FHIR R4 resource (see the module docstring); the input is not
    changed. Raises :class:`PseudonymKeyMissing` without a key."""
    if not key:
        raise PseudonymKeyMissing("de-identified output needs ADAPTER_PSEUDONYM_KEY")
    allowed = ALLOWED.get(resource.get("resourceType", ""), _BASE - {"extension"})
    out = {k: copy.deepcopy(v) for k, v in resource.items() if k in allowed}
    if "contained" in out:
        out["contained"] = [deidentify(c, key, birth_date) for c in out["contained"]]
    patient = _patient_of(resource)
    if shift_days > 0 and patient:
        out = _shift_dates(out, date_shift(key, patient, shift_days))
    if out.get("resourceType") == "Patient":
        site = _site_of(out)
        local = _local_id(out, site)
        out["identifier"] = ([{"system": PSEUDONYM_SYSTEM, "value": pseudonym(key, site, local)}]
                             if local is not None else [])
        if not out["identifier"]:
            out.pop("identifier")
        if "birthDate" in out:
            out["birthDate"] = truncate_date(out["birthDate"], birth_date)
    elif "identifier" in out:
        kept = [i for i in out["identifier"] if not str(i.get("system", "")).startswith(SITE_SID)
                or i.get("system") == SITE_SID + "site"]
        if kept:
            out["identifier"] = kept
        else:
            out.pop("identifier")
    return out


class DeidentifiedFilterError(ValueError):
    """A search or ``_typeFilter`` on de-identified output filters on an element that output removes
    or coarsens (answered 400 with an OperationOutcome naming the parameter)."""


#: Search parameters on identifiers: de-identified output drops them, or (Patient) replaces them by
#: the study pseudonym, so filtering on them would link a record number to its pseudonym.
_IDENTIFIER_PARAMS = {"identifier"}
_PRECISION = {"year-month": 7, "year": 4}


def check_deidentified_query(query: Any, birth_date: Literal["year-month", "year"] = "year-month",
                             shift_days: int = 0) -> None:
    """Refuse a search (:class:`adapter.search.query.Query`) whose results are to be de-identified
    when it filters or sorts on what de-identification removes or coarsens; a filter there would
    recover what the output hides (a record number behind a pseudonym, the day of birth behind a
    year-month). The rules:

    - ``identifier`` (any type): removed, or replaced by the study pseudonym;
    - ``birthdate`` finer than the kept precision (``year-month``: ``2009-05`` is allowed,
      ``2009-05-03`` is not; ``year``: only ``2009``), and sorting by it;
    - any date search parameter, and sorting by one, when dates are shifted (``shift_days`` > 0);
      ``_lastUpdated`` is not shifted and stays allowed;
    - any parameter on an element the type's allow-list (:data:`ALLOWED`) drops.

    Raises :class:`DeidentifiedFilterError` naming the parameter."""
    from adapter.search.params import PARAMS

    rtype = query.type
    allowed = ALLOWED.get(rtype, _BASE)
    params = PARAMS.get(rtype, {})

    def refuse(name: str, why: str) -> None:
        raise DeidentifiedFilterError(f"{name}: de-identified {rtype} output {why}, so it cannot be searched "
                                      "on (filters on removed or coarsened elements are refused)")

    for clause in query.clauses:
        name = clause.name
        p = params.get(name)
        if name in _IDENTIFIER_PARAMS:
            refuse(name, "holds no site identifier (they are removed, or replaced by the study pseudonym)")
        if p is not None and any(path.split(".")[0] not in allowed for path in p.paths):
            refuse(name, f"drops {', '.join(p.paths)}")
        if clause.kind == "date" and shift_days > 0:
            refuse(name, f"moves every date by a per-patient offset of up to {shift_days} days")
        if name == "birthdate" and not all(_whole_year(v) or (birth_date == "year-month" and _whole_month(v))
                                           for v in clause.values):
            refuse(name, f"gives the birth date to the {birth_date} only")
    for name, _desc in query.sort:
        if name == "birthdate" or (shift_days > 0 and name not in ("_id", "_lastUpdated")):
            refuse(f"_sort={name}", "coarsens or shifts that date")


def _whole_year(value: Any) -> bool:
    """A parsed date search value (``DateRange``, the instant range its text covers) that is a whole
    calendar year (the text was ``YYYY``)."""
    return (value.lo[:4] == value.hi[:4] and value.lo[4:] == "-01-01T00:00:00.000000"
            and value.hi[4:] == "-12-31T23:59:59.999999")


def _whole_month(value: Any) -> bool:
    """... a whole calendar month (the text was ``YYYY-MM``)."""
    import calendar

    y, m = value.lo[:4], value.lo[5:7]
    if not (y.isdigit() and m.isdigit()) or value.lo[:7] != value.hi[:7] or value.lo[7:] != "-01T00:00:00.000000":
        return False
    last = calendar.monthrange(int(y), int(m))[1]
    return value.hi[7:] == f"-{last:02d}T23:59:59.999999"


_NON_COUNTS = {"at", "timepoint_months", "median", "mean", "min", "max", "sd", "q1", "q3", "rate", "survival", "p", "chi2", "df",
               "median_months", "reverse_km_median_months", "value", "per_usd", "saving_share", "outpatient_share"}


def suppress_small_cells(report: Any, threshold: int = 5) -> Any:
    """A copy of an outcomes report with every count from 1 to ``threshold`` − 1 replaced by
    ``"<threshold"``; see the module docstring for rates, intervals and summaries."""
    mark = f"<{threshold}"

    def small(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 < v < threshold

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            if small(node.get("count")):
                node = {**node, "rate": None, "ci95": None}
            if small(node.get("n")) and {"median", "min", "max"} & set(node):
                return {"n": mark}
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if small(node) and key not in _NON_COUNTS:
            return mark
        return node

    return walk(report)
