"""AdverseEvent (profile ``pedall-adverse-event``) for CRS, ICANS, infections and other toxicities,
AdverseEvent for death with its cause, and Encounter for PICU admissions.

Rules (REFERENCE.md §4): the grade (0-5) goes in the ``ae-grade`` extension and the grading system
(CTCAE v5, ASTCT 2019, Lee 2014) in ``ae-grading-system``; ``severity`` (required binding mild |
moderate | severe) carries what it can express (grade 1 mild, 2 moderate, 3-5 severe), so a generic
reader finds grade >= 3 as ``severe``; a CTCAE v5 grade 1-4 is also coded (NCIt) in the HL7 Adverse
Event IG's ``ae-grade`` extension. ``outcome`` is required-bound to
adverse-event-outcome. ``suspectEntity`` points to the infusion cycle when the site says the event
is related to blinatumomab.
"""

from __future__ import annotations

from datetime import date
from datetime import date as _Date
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded

AE_OUTCOME = "http://terminology.hl7.org/CodeSystem/adverse-event-outcome"
AE_SEVERITY = "http://terminology.hl7.org/CodeSystem/adverse-event-severity"
SERIOUSNESS = "http://terminology.hl7.org/CodeSystem/adverse-event-seriousness"
#: The HL7 Adverse Event Clinical Research IG's grade extension (STU1 1.0.1; REFERENCE.md §4), coded
#: with the NCI Thesaurus' CTCAE grade concepts: Grade 1-4 Adverse Event (C41338, C41339, C41340,
#: C41337). Grade 5 has no confirmed code here, so it is not coded (``ae-grade`` keeps it).
AE_IG_GRADE = "http://hl7.org/fhir/uv/ae-research-backport-ig/StructureDefinition/ae-grade"
NCIT = "http://ncicb.nci.nih.gov/xml/owl/EVS/Thesaurus.owl"
NCIT_GRADE = {1: ("C41338", "Grade 1 Adverse Event"), 2: ("C41339", "Grade 2 Adverse Event"),
              3: ("C41340", "Grade 3 Adverse Event"), 4: ("C41337", "Grade 4 Adverse Event")}
#: AdverseEvent.severity (required binding mild | moderate | severe) from a grade: CTCAE v5's grade
#: 1 is "mild", 2 "moderate", 3 "severe or medically significant", 4 "life-threatening", 5
#: "death"; grades 3-5 are all ``severe``, so ``severity = severe`` finds every grade >= 3.
SEVERITY = {1: ("mild", "Mild"), 2: ("moderate", "Moderate"), 3: ("severe", "Severe"), 4: ("severe", "Severe"),
            5: ("severe", "Severe")}
AE_CATEGORY = "http://terminology.hl7.org/CodeSystem/adverse-event-category"


class AdverseEventInput(ConceptInput):
    """``event`` from a code table (project adverse-event-term codes, MedDRA where confirmed in its
    ``extra.meddra``); ``grade`` 0-5 with ``grading_system``; ``related``/``cycle`` give the suspect
    infusion; ``outcome`` codes from adverse-event-outcome; ``occurrence`` disambiguates two events
    of the same term on the same day."""

    date: date
    event: Coded
    grade: int | None = None
    grading_system: Coded | None = None
    related: bool | None = None
    cycle: int | None = None
    outcome: Coded | None = None
    serious: bool | None = None
    occurrence: int = 1


def _event_concept(event: Coded) -> dict[str, Any]:
    codings = [event.coding()]
    meddra = event.extra.get("meddra")
    if meddra:
        codings.append(fhir.coding("https://www.meddra.org", str(meddra["code"]), meddra.get("display")))
    return fhir.concept(*codings)


def _base(inp: ConceptInput, site: SiteContext, rid: str, when: date, event: dict[str, Any]) -> dict[str, Any]:
    ae = fhir.profiled("AdverseEvent", rid, "pedall-adverse-event")
    ae["actuality"] = "actual"
    ae["event"] = event
    ae["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    ae["date"] = fhir.fhir_date(when)
    return ae


@concept("adverse_event", AdverseEventInput, ("AdverseEvent",))
def to_adverse_event(inp: AdverseEventInput, site: SiteContext) -> list[dict[str, Any]]:
    """One AdverseEvent. Raises ``ValueError`` for a grade outside 0-5, a grade without a grading
    system, or a related event without its cycle number."""
    if inp.grade is not None and not 0 <= inp.grade <= 5:
        raise ValueError(f"grade {inp.grade} is outside 0-5")
    if inp.grade is not None and inp.grading_system is None:
        raise ValueError("a grade needs its grading system")
    if inp.related and inp.cycle is None:
        raise ValueError("an event related to blinatumomab needs the cycle number")
    rid = site.id("adverse-event", inp.patient, inp.date.isoformat(), inp.event.code, inp.occurrence)
    ae = _base(inp, site, rid, inp.date, _event_concept(inp.event))
    ext = []
    if inp.grade is not None and inp.grading_system is not None:
        ext.append({"url": fhir.SD + "ae-grade", "valueInteger": inp.grade})
        ext.append({"url": fhir.SD + "ae-grading-system", "valueCodeableConcept": fhir.concept(inp.grading_system.coding())})
        if inp.grading_system.code == "ctcae-v5" and inp.grade in NCIT_GRADE:
            ext.append({"url": AE_IG_GRADE, "valueCodeableConcept": fhir.concept(fhir.coding(NCIT, *NCIT_GRADE[inp.grade]))})
    if inp.cycle is not None:
        ext.append({"url": fhir.SD + "treatment-cycle", "valueInteger": inp.cycle})
    if ext:
        ae = {**{k: ae[k] for k in ("resourceType", "id", "meta")}, "extension": ext,
              **{k: v for k, v in ae.items() if k not in ("resourceType", "id", "meta")}}
    if inp.grade in SEVERITY:
        ae["severity"] = fhir.concept(fhir.coding(AE_SEVERITY, *SEVERITY[inp.grade]))
    serious = inp.serious if inp.serious is not None else (inp.grade is not None and inp.grade >= 3)
    # R4 CodeSystem adverse-event-seriousness: the codes are "Serious" and "Non-serious" (case matters;
    # the HL7 validator found the lower-case spelling unknown)
    ae["seriousness"] = fhir.concept(fhir.coding(
        SERIOUSNESS, "Serious" if serious else "Non-serious", "Serious" if serious else "Non-serious"))
    if inp.outcome is not None:
        ae["outcome"] = fhir.concept(inp.outcome.coding())
    if inp.related and inp.cycle is not None:
        # The sources say only "related"; no causality grade is invented.
        ae["suspectEntity"] = [{
            "instance": fhir.ref("MedicationAdministration", site.infusion_id(inp.patient, inp.cycle)),
        }]
    return [ae]


class DeathInput(ConceptInput):
    """``date`` of death (may be absent: the death is still recorded); ``cause`` from a
    cause-of-death code table (may be absent: unknown)."""

    date: _Date | None = None  # (the field's name hides the type inside the class body)
    cause: Coded | None = None


@concept("death", DeathInput, ("AdverseEvent", "Patient"))
def to_death(inp: DeathInput, site: SiteContext) -> list[dict[str, Any]]:
    """Death: ``Patient.deceasedDateTime`` (``deceasedBoolean: true`` when the date is not known),
    as a :class:`~adapter.mapping.fhir.Contribution` to the Patient, so that a generic FHIR reader
    finds every death on the Patient (FHIR R4 §8.1); and an AdverseEvent: event ``death``, outcome
    ``fatal``, grade 5, the cause in the ``cause-of-death`` extension, ``date`` when known. Its id
    depends only on the patient, so one death is one resource."""
    ae = fhir.profiled("AdverseEvent", site.id("death", inp.patient), "pedall-adverse-event")
    ae["actuality"] = "actual"
    ae["event"] = fhir.concept(codes.DEATH, text="Death")
    ae["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if inp.date is not None:
        ae["date"] = fhir.fhir_date(inp.date)
    ext: list[dict[str, Any]] = []
    if inp.cause is not None:
        cause = _event_concept(inp.cause)
        if inp.cause.display:
            cause["text"] = inp.cause.display
        ext.append({"url": fhir.SD + "cause-of-death", "valueCodeableConcept": cause})
    if ext:
        ae = {**{k: ae[k] for k in ("resourceType", "id", "meta")}, "extension": ext,
              **{k: v for k, v in ae.items() if k not in ("resourceType", "id", "meta")}}
    ae["seriousness"] = fhir.concept(fhir.coding(SERIOUSNESS, "Serious", "Serious"))
    ae["outcome"] = fhir.concept(fhir.coding(AE_OUTCOME, "fatal", "Fatal"))
    return [ae, patient_death(inp.patient, site, inp.date)]


def patient_death(patient: str, site: SiteContext, when: date | None) -> fhir.Contribution:
    """The Patient as a death states it: identity (identifier, managing Organization, profile) and
    ``deceasedDateTime``, or ``deceasedBoolean: true`` without a date."""
    from adapter.mapping.patient import patient_identity

    pat = patient_identity(patient, site)
    org = pat.pop("managingOrganization")
    if when is not None:
        pat["deceasedDateTime"] = fhir.fhir_date(when)
    else:
        pat["deceasedBoolean"] = True
    pat["managingOrganization"] = org
    return fhir.Contribution(pat)


class EncounterInput(ConceptInput):
    """``start`` of the stay; ``type`` from a code table (e.g. ``picu-admission``); ``end`` if known."""

    start: date
    type: Coded
    end: date | None = None


@concept("encounter", EncounterInput, ("Encounter",))
def to_encounter(inp: EncounterInput, site: SiteContext) -> list[dict[str, Any]]:
    """An inpatient Encounter (class IMP, v3-ActCode), e.g. a PICU admission."""
    enc = fhir.profiled("Encounter", site.id("encounter", inp.patient, inp.start.isoformat(), inp.type.code),
                        "pedall-encounter")
    enc["status"] = "finished" if inp.end is not None else "unknown"
    enc["class"] = fhir.coding(fhir.V3_ACT_CODE, "IMP", "inpatient encounter")
    enc["type"] = [fhir.concept(inp.type.coding())]
    enc["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    period = {"start": fhir.fhir_date(inp.start)}
    if inp.end is not None:
        period["end"] = fhir.fhir_date(inp.end)
    enc["period"] = period
    enc["serviceProvider"] = fhir.ref("Organization", site.site)
    return [enc]
