"""Observation, MRD: measurable residual disease in bone marrow (profile ``pedall-mrd``).

Rules (seed papers 000 and 002; REFERENCE.md §1):
- ``valueQuantity`` in UCUM ``%`` (percent of nucleated cells) with the source's comparator.
- interpretation NEG below the site's threshold (0.01 % = 10^-4), POS above; a value exactly at the
  threshold follows the site's declaration; ``<x`` with x above the threshold is IND (indeterminate).
- "positive not quantifiable" (RQ-PCR, seed 004): interpretation POS with no ``valueQuantity`` and
  ``dataAbsentReason`` ``as-text`` (FHIR R4 Observation invariant obs-6: value or the reason it is
  absent), the source text in ``note``. No comparator value is invented: ``<0.01 %`` would read as
  MRD-negative to any consumer that ignores ``interpretation``.
- ``partOf`` points to the infusion cycle assessed (its step-1 MedicationAdministration); the
  pre-treatment value has no ``partOf``.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded
from adapter.mapping.transforms import MRDValue


class MRDInput(ConceptInput):
    """``timepoint`` codes come from CodeSystem assessment-timepoint (``pre-treatment`` or
    ``post-cycle``); ``post-cycle`` needs ``cycle``. ``method`` codes from CodeSystem mrd-method.
    ``status``: FHIR ObservationStatus (``final`` when not given; HL7 v2 OBX-11 through the
    ``obx_result_status`` table: F final, C corrected, P preliminary). A corrected result keeps the
    source keys of the result it corrects (``identifier``), so it updates that Observation."""

    identifier: str | None = None
    effectiveDateTime: date
    valueQuantity: MRDValue
    method: Coded
    specimen: Coded
    timepoint: Coded
    cycle: int | None = None
    status: Coded | None = None


def interpretation(value: MRDValue, threshold: float, equal_is_negative: bool) -> str:
    """v3-ObservationInterpretation code (POS, NEG or IND) of an MRD result against a threshold in %."""
    t = Decimal(str(threshold))
    v, comp = value.value, value.comparator
    if v is None:
        return "POS"  # detected, below the quantitative range
    if comp == "<":
        return "NEG" if v <= t else "IND"
    if comp == "<=":
        return "NEG" if v < t or (v == t and equal_is_negative) else "IND"
    if comp in (">", ">="):
        return "POS" if v >= t else "IND"
    if v < t:
        return "NEG"
    if v == t:
        return "NEG" if equal_is_negative else "POS"
    return "POS"


DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
_INTERPRETATION_DISPLAY = {"POS": "Positive", "NEG": "Negative", "IND": "Indeterminate"}


@concept("mrd", MRDInput, ("Observation",))
def to_mrd_observation(inp: MRDInput, site: SiteContext) -> list[dict[str, Any]]:
    """One MRD Observation. Raises ``ValueError`` for a post-cycle result without a cycle number."""
    tp = inp.timepoint.code
    if tp == "post-cycle" and inp.cycle is None:
        raise ValueError("a post-cycle MRD result needs the cycle number")
    key = inp.identifier or f"{inp.effectiveDateTime.isoformat()}|{tp}|{inp.cycle}"
    obs = fhir.profiled("Observation", site.id("mrd", inp.patient, key), "pedall-mrd")
    if inp.identifier:
        obs["identifier"] = [{"system": f"{fhir.SID}{site.site}/lab-accession", "value": inp.identifier}]
    if tp == "post-cycle":
        obs["partOf"] = [fhir.ref("MedicationAdministration", site.infusion_id(inp.patient, inp.cycle or 0))]
    obs["status"] = inp.status.code if inp.status is not None and inp.status.code else "final"
    obs["category"] = [
        fhir.concept(fhir.coding(fhir.OBS_CATEGORY, "laboratory", "Laboratory")),
        fhir.concept(inp.timepoint.coding()),
    ]
    obs["code"] = fhir.concept(codes.MRD, text="MRD")
    patient_id = site.patient_id(inp.patient)
    obs["subject"] = fhir.ref("Patient", patient_id)
    obs["effectiveDateTime"] = fhir.fhir_date(inp.effectiveDateTime)
    if inp.valueQuantity.value is None:
        obs["dataAbsentReason"] = fhir.concept(fhir.coding(DATA_ABSENT, "as-text", "As Text"),
                                               text="positive, not quantifiable")
        obs["note"] = [{"text": "MRD detected below the quantitative range (positive, not quantifiable)"}]
    else:
        q: dict[str, Any] = {"value": fhir.fhir_decimal(inp.valueQuantity.value)}
        if inp.valueQuantity.comparator:
            q["comparator"] = inp.valueQuantity.comparator
        q.update({"unit": "%", "system": fhir.UCUM, "code": "%"})
        obs["valueQuantity"] = q
    interp = interpretation(inp.valueQuantity, site.mrd_threshold, site.mrd_equal_is_negative)
    obs["interpretation"] = [fhir.concept(fhir.coding(fhir.OBS_INTERPRETATION, interp,
                                                      _INTERPRETATION_DISPLAY[interp]))]
    obs["method"] = fhir.concept(inp.method.coding())
    obs["specimen"] = {"reference": "#specimen"}
    obs["contained"] = [{
        "resourceType": "Specimen", "id": "specimen",
        "type": fhir.concept(inp.specimen.coding()),
        "subject": fhir.ref("Patient", patient_id),
    }]
    obs["referenceRange"] = [{
        "high": {"value": site.mrd_threshold, "unit": "%", "system": fhir.UCUM, "code": "%"},
        "text": f"negative < {site.mrd_threshold} % (10^-4)",
    }]
    if inp.cycle is not None:
        obs["extension"] = [{"url": fhir.SD + "treatment-cycle", "valueInteger": inp.cycle}]
    return [_order(obs)]


_ORDER = ("resourceType", "id", "meta", "contained", "extension", "identifier", "partOf", "status",
          "category", "code", "subject", "effectiveDateTime", "valueQuantity", "dataAbsentReason",
          "interpretation", "note", "method", "specimen", "referenceRange")


def _order(obs: dict[str, Any]) -> dict[str, Any]:
    return {k: obs[k] for k in _ORDER if k in obs}
