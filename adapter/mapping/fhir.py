"""Small builders for FHIR R4 datatypes and the project's canonical URLs, shared by mapping modules."""

from __future__ import annotations

import hmac
from datetime import date
from decimal import Decimal
from functools import lru_cache
from typing import Any

from adapter.config import CANONICAL

SD = f"{CANONICAL}/StructureDefinition/"
CS = f"{CANONICAL}/CodeSystem/"
SID = f"{CANONICAL}/sid/"

UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
OBS_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
MED_ADMIN_CATEGORY = "http://terminology.hl7.org/CodeSystem/medication-admin-category"
CONDITION_VER_STATUS = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@lru_cache(maxsize=16)
def _keyed(key: str) -> hmac.HMAC:
    return hmac.new(key.encode(), digestmod="sha256")


@lru_cache(maxsize=1 << 16)
def resource_id(key: str, site: str, kind: str, *parts: object) -> str:
    """Deterministic resource id from site + concept kind + source keys.

    ``HMAC-SHA256(key, "site|kind|part|...")`` as 32 hex digits, prefixed with the site code. The
    same source keys always give the same id (so re-posting a file updates in place), and record
    numbers cannot be recovered from ids by enumeration without the key. Output matches the FHIR id
    pattern ``[A-Za-z0-9\\-\\.]{1,64}`` (FHIR R4 §2.24.0.1 id). Pure, so results are cached (a
    patient's id is asked for by every row about that patient).
    """
    mac = _keyed(key).copy()
    mac.update("|".join([site, kind, *(str(p) for p in parts)]).encode())
    return f"{site}-{mac.hexdigest()[:32]}"


def ref(resource_type: str, rid: str) -> dict[str, str]:
    """A relative literal ``Reference`` (FHIR R4 §2.3.0 References)."""
    return {"reference": f"{resource_type}/{rid}"}


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings: dict[str, str], text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [c for c in codings if c]}
    if text:
        out["text"] = text
    return out


def fhir_date(d: date) -> str:
    """``date`` -> FHIR ``date``/``dateTime`` text (``YYYY-MM-DD``)."""
    return d.isoformat()


def fhir_decimal(d: Decimal) -> float | int:
    """Decimal -> JSON number, keeping the source's precision where JSON allows it."""
    if d == d.to_integral_value() and d.as_tuple().exponent >= 0:
        return int(d)
    return float(d)


def profiled(resource_type: str, rid: str, profile: str) -> dict[str, Any]:
    """The skeleton every produced resource starts from: type, id and ``meta.profile``."""
    return {"resourceType": resource_type, "id": rid, "meta": {"profile": [SD + profile]}}


class Contribution(dict):  # type: ignore[type-arg]
    """A partial resource: the elements one source row states about a resource that others write
    in full (a death stated by an event row sets ``Patient.deceased[x]`` of a Patient whose
    demographics come from another file). Ingestion merges it into that resource instead of
    replacing it (adapter/ingest.py, :func:`merge_deceased`); it is never stored on its own unless
    nothing else writes the resource."""


#: The ``deceased[x]`` elements of Patient, from least to most informative (FHIR R4 §8.1 Patient:
#: ``deceasedBoolean`` or ``deceasedDateTime``; a date implies the patient is dead).
DECEASED = ("deceasedBoolean", "deceasedDateTime")


def merge_deceased(base: dict[str, Any], other: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``base`` with the death ``other`` states merged in, and a conflict message (else ``None``).

    Rules: a date of death wins over ``deceasedBoolean``; ``deceasedBoolean: true`` wins over
    nothing; ``deceasedBoolean: false`` (stated alive) wins over nothing but gives way to a stated
    death only when that death has a date (a later event is more specific than a status column);
    two different dates of death are a conflict (``base`` is kept)."""
    mine = {k: base[k] for k in DECEASED if k in base}
    theirs = {k: other[k] for k in DECEASED if k in other}
    if not theirs:
        return base, None

    def rank(d: dict[str, Any]) -> int:
        if "deceasedDateTime" in d:
            return 3
        if d.get("deceasedBoolean") is True:
            return 2
        return 1 if "deceasedBoolean" in d else 0

    if rank(mine) == 3 and rank(theirs) == 3 and mine["deceasedDateTime"] != theirs["deceasedDateTime"]:
        return base, (f"two dates of death: {mine['deceasedDateTime']} and {theirs['deceasedDateTime']}")
    if rank(theirs) > rank(mine):
        kept = {k: v for k, v in base.items() if k not in DECEASED}
        # keep the element order of a Patient: deceased[x] before managingOrganization
        out: dict[str, Any] = {}
        for k, v in kept.items():
            if k == "managingOrganization":
                out.update(theirs)
            out[k] = v
        if not any(k in out for k in DECEASED):
            out.update(theirs)
        return out, None
    return base, None
