"""The disease course that outcome analyses need (modelling choices in ``profiles/README.md``):

- ``diagnosis``: Condition, B-cell ALL (SNOMED CT 277571004, REFERENCE.md §2), with its onset date.
- ``disease_status``: Observation modelled on mCODE 4.0.0 cancer disease status (LOINC 97509-4):
  status at blinatumomab start (refractory, relapse N), and later relapse or progression with its
  date. The assessment time point is a second ``category`` coding (assessment-timepoint).
- ``response``: Observation of the response to blinatumomab (CR with MRD negativity, MRD clearance,
  PR, PD; definitions of seed paper 002), ``partOf`` the cycle it assesses.
- ``follow_up``: Observation of vital status at the last follow-up date.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded


def _extra_codings(c: Coded) -> list[dict[str, str]]:
    out = [c.coding()]
    std = c.extra.get("snomed")
    if std:
        out.append(fhir.coding(fhir.SNOMED, str(std["code"]), std.get("display")))
    return out


class DiagnosisInput(ConceptInput):
    """``code``: diagnosis from a code table (SNOMED CT); ``onsetDateTime``: date of diagnosis."""

    code: Coded
    onsetDateTime: date | None = None


@concept("diagnosis", DiagnosisInput, ("Condition",))
def to_diagnosis(inp: DiagnosisInput, site: SiteContext) -> list[dict[str, Any]]:
    """The leukemia diagnosis as a Condition (one per patient)."""
    cond = fhir.profiled("Condition", site.id("diagnosis", inp.patient), "pedall-diagnosis")
    cond["verificationStatus"] = fhir.concept(fhir.coding(fhir.CONDITION_VER_STATUS, "confirmed", "Confirmed"))
    cond["category"] = [fhir.concept(fhir.coding(
        "http://terminology.hl7.org/CodeSystem/condition-category", "encounter-diagnosis", "Encounter Diagnosis"))]
    cond["code"] = fhir.concept(*_extra_codings(inp.code))
    cond["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if inp.onsetDateTime is not None:
        cond["onsetDateTime"] = fhir.fhir_date(inp.onsetDateTime)
    return [cond]


class DiseaseStatusInput(ConceptInput):
    """``status`` from a code table (CodeSystem disease-status; ``extra.snomed`` for the standard
    code); ``timepoint`` (assessment-timepoint); ``prior_lines``: previous treatment lines."""

    status: Coded
    timepoint: Coded
    effectiveDateTime: date | None = None
    prior_lines: int | None = None


@concept("disease_status", DiseaseStatusInput, ("Observation",))
def to_disease_status(inp: DiseaseStatusInput, site: SiteContext) -> list[dict[str, Any]]:
    """A cancer disease status Observation (mCODE-style), focus on the diagnosis Condition.
    Raises ``ValueError`` for a follow-up status without a date."""
    tp = inp.timepoint.code
    if tp != "pre-treatment" and inp.effectiveDateTime is None:
        raise ValueError("a disease status after treatment needs its date")
    key = (tp, inp.status.code, inp.effectiveDateTime.isoformat() if tp != "pre-treatment" and
           inp.effectiveDateTime else "")
    obs = fhir.profiled("Observation", site.id("disease-status", inp.patient, *key), "pedall-disease-status")
    obs["status"] = "final"
    obs["category"] = [fhir.concept(inp.timepoint.coding())]
    obs["code"] = fhir.concept(codes.DISEASE_STATUS)
    obs["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    obs["focus"] = [fhir.ref("Condition", site.id("diagnosis", inp.patient))]
    if inp.effectiveDateTime is not None:
        obs["effectiveDateTime"] = fhir.fhir_date(inp.effectiveDateTime)
    obs["valueCodeableConcept"] = fhir.concept(*_extra_codings(inp.status))
    if inp.prior_lines is not None:
        obs["component"] = [{"code": fhir.concept(codes.PRIOR_LINES), "valueInteger": inp.prior_lines}]
    return [obs]


class ResponseInput(ConceptInput):
    """``response`` from a code table (CodeSystem blinatumomab-response); ``effectiveDateTime`` of
    the assessment; ``cycle`` assessed (``partOf`` its infusion)."""

    response: Coded
    effectiveDateTime: date | None = None
    cycle: int | None = None


@concept("response", ResponseInput, ("Observation",))
def to_response(inp: ResponseInput, site: SiteContext) -> list[dict[str, Any]]:
    """The response to blinatumomab as an Observation (one per patient and cycle)."""
    obs = fhir.profiled("Observation", site.id("response", inp.patient, inp.cycle or ""), "pedall-response")
    if inp.cycle is not None:
        obs["partOf"] = [fhir.ref("MedicationAdministration", site.infusion_id(inp.patient, inp.cycle))]
    obs["status"] = "final"
    obs["category"] = [fhir.concept(fhir.coding(codes.TIMEPOINT, "post-cycle", "After a blinatumomab cycle"))]
    obs["code"] = fhir.concept(codes.RESPONSE)
    obs["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if inp.effectiveDateTime is not None:
        obs["effectiveDateTime"] = fhir.fhir_date(inp.effectiveDateTime)
    obs["valueCodeableConcept"] = fhir.concept(inp.response.coding())
    return [obs]


class FollowUpInput(ConceptInput):
    """``last_contact``: date of last follow-up (or death); ``vital_status`` alive | dead
    (CodeSystem vital-status)."""

    last_contact: date
    vital_status: Coded


@concept("follow_up", FollowUpInput, ("Observation", "Patient"))
def to_follow_up(inp: FollowUpInput, site: SiteContext) -> list[dict[str, Any]]:
    """Vital status at the last follow-up date: the censoring time of OS/EFS analyses. A status
    ``dead`` also states ``Patient.deceasedBoolean: true`` (a Contribution; the date of death, when
    a death concept or the Patient gives it, wins)."""
    obs = fhir.profiled("Observation", site.id("follow-up", inp.patient), "pedall-vital-status")
    obs["status"] = "final"
    obs["category"] = [fhir.concept(fhir.coding(codes.TIMEPOINT, "follow-up", "Follow-up"))]
    obs["code"] = fhir.concept(codes.VITAL)
    obs["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    obs["effectiveDateTime"] = fhir.fhir_date(inp.last_contact)
    obs["valueCodeableConcept"] = fhir.concept(inp.vital_status.coding())
    if inp.vital_status.code == "dead":  # every death reaches Patient.deceased[x] (R4 §8.1)
        from adapter.mapping.adverse_event import patient_death

        return [obs, patient_death(inp.patient, site, None)]
    return [obs]
