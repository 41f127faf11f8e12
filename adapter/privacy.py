"""What leaves a site: study pseudonyms, de-identified resources and small-cell suppression (pure
functions; the API and the CLI apply them to coordinator-facing outputs).

- **Pseudonym** (SMART Cumulus's design, "de-identification": a keyed hash of the local id): the
  study pseudonym of a patient is ``HMAC-SHA256(key, "<site>|<local identifier>")`` in hex. The key
  is a secret of the network (``ADAPTER_PSEUDONYM_KEY``); without it no pseudonym can be made and
  de-identified output is refused. The same record number at two sites gives two pseudonyms.
- **De-identified resource**: the Patient keeps only its pseudonym as identifier (system
  :data:`PSEUDONYM_SYSTEM`) and a birth date cut to year-month or year; every other resource loses
  its site-scoped identifiers (e.g. lab accession numbers), ``note`` and ``text`` (free text).
  References keep the resource ids, which are already keyed hashes (``ADAPTER_ID_KEY``).
  The local identifier stays stored: a site's own reads are unchanged.
- **Small-cell suppression** of aggregate reports: a count from 1 to threshold − 1 is shown as
  ``"<threshold"`` (zero is shown: it discloses nobody), and the rate and interval computed from it
  are withheld; a summary (median, range …) of fewer than threshold patients keeps only its ``n``.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
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


def deidentify(resource: dict[str, Any], key: str | None,
               birth_date: Literal["year-month", "year"] = "year-month") -> dict[str, Any]:
    """A de-identified copy of one FHIR R4 resource (see the module docstring); the input is not
    changed. Raises :class:`PseudonymKeyMissing` without a key."""
    if not key:
        raise PseudonymKeyMissing("de-identified output needs ADAPTER_PSEUDONYM_KEY")
    out = copy.deepcopy(resource)
    out.pop("text", None)
    out.pop("note", None)
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


_NON_COUNTS = {"at", "timepoint_months", "median", "mean", "min", "max", "sd", "rate", "survival", "p", "chi2", "df",
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
