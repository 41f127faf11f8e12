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
