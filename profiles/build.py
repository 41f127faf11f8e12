"""Write the project's conformance resources as JSON: StructureDefinitions (differentials), extension
definitions, CodeSystems, ValueSets, and one example per profile.

This file is the source; the JSON beside it is what tools and the validator read. Run it after
editing (``.venv/bin/python profiles/build.py``); ``tests/test_profiles.py`` fails when the JSON is
out of date. Examples are produced by the mapping modules themselves from made-up inputs.
"""

from __future__ import annotations

import json
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from adapter.config import CANONICAL  # noqa: E402
from adapter.mapping import adverse_event, disease, dispense, hsct, infusion, mrd, observation, patient, therapy  # noqa: E402
from adapter.mapping.base import SiteContext  # noqa: E402
from adapter.mapping.fhir import CS, SD  # noqa: E402
from adapter.mapping.transforms import Concept, HLAMatch, Measured, MRDValue  # noqa: E402

VS = f"{CANONICAL}/ValueSet/"
V3_INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
MAC = "http://terminology.hl7.org/CodeSystem/medication-admin-category"

CODESYSTEMS: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "observation-code": ("Observation codes of the project (no standard code is confirmed for these)", [
        ("mrd", "Measurable residual disease, % of nucleated cells in bone marrow",
         "MRD as a percentage of nucleated cells; negative below 0.01 % (10^-4). REFERENCE.md §1: no LOINC code confirmed."),
        ("blinatumomab-response", "Response to blinatumomab", "Response assessment after a blinatumomab cycle (seed 002 definitions)."),
        ("vital-status", "Vital status at last follow-up", "Alive or dead at the last follow-up date."),
        ("prior-therapy-lines", "Number of previous treatment lines", "Lines of therapy before blinatumomab."),
        ("fusion-gene", "Fusion gene", "A fusion gene or rearrangement found in the leukemic cells, as the site wrote it "
         "(e.g. ETV6-RUNX1, BCR-ABL1, KMT2A-AFF1); HL7 Genomics Reporting codes are not confirmed here (REFERENCE.md)."),
        ("genetic-marker", "Genetic marker", "A named genetic or immunophenotypic marker and whether it was found "
         "(the marker in Observation.code.text, the finding as the value).")]),
    "assessment-timepoint": ("When an assessment was made relative to blinatumomab", [
        ("pre-treatment", "Before blinatumomab", "Assessment before the first blinatumomab cycle (relapse/refractoriness)."),
        ("post-cycle", "After a blinatumomab cycle", "Assessment at the end of a cycle."),
        ("follow-up", "Follow-up", "Assessment during follow-up after blinatumomab."),
        ("diagnosis", "At diagnosis", "Event between diagnosis and blinatumomab (e.g. an earlier relapse).")]),
    "mrd-method": ("MRD methods (after the Danish KIP IG's flow/ngs/pcr list)", [
        ("flow-cytometry", "Multiparameter flow cytometry", "EuroFlow-type multiparameter flow cytometry (LLOQ to 10^-6)."),
        ("rq-pcr", "Real-time quantitative PCR of Ig/TCR or fusion transcripts", "RQ-PCR; may report 'positive, not quantifiable'."),
        ("ngs", "Next-generation sequencing", "NGS of Ig/TCR rearrangements.")]),
    "specimen-type": ("Specimen types for MRD", [
        ("bone-marrow", "Bone marrow", "Bone marrow aspirate."),
        ("peripheral-blood", "Peripheral blood", "Peripheral blood.")]),
    "adverse-event-term": ("Adverse event terms and causes of death (MedDRA added where confirmed)", [
        ("crs", "Cytokine release syndrome", "CRS (MedDRA 10052015)."),
        ("icans", "Immune effector cell-associated neurotoxicity syndrome", "ICANS, graded by ASTCT consensus."),
        ("neutropenia", "Neutropenia", "Neutropenia."),
        ("febrile-neutropenia", "Febrile neutropenia", "Febrile neutropenia (MedDRA 10016288)."),
        ("infection", "Infection", "Infection, organism not specified."),
        ("sepsis", "Sepsis", "Sepsis (MedDRA 10040047)."),
        ("septic-shock", "Septic shock", "Septic shock."),
        ("pneumonia", "Pneumonia", "Pneumonia, organism not specified."),
        ("pjp-pneumonia", "Pneumocystis jirovecii pneumonia", "Pneumonia with Pneumocystis jirovecii isolated."),
        ("hemorrhagic-syndrome", "Hemorrhagic syndrome", "Hemorrhagic syndrome."),
        ("thrombosis", "Thrombosis", "Thrombosis or thromboembolic complication."),
        ("relapse", "Relapse of leukemia", "Relapse of leukemia (as a cause of death)."),
        ("progression", "Progression of leukemia", "Progressive or refractory leukemia (as a cause of death)."),
        ("acute-gvhd", "Acute graft-versus-host disease", "Acute GVHD (SNOMED 402355000)."),
        ("chronic-gvhd", "Chronic graft-versus-host disease", "Chronic GVHD (SNOMED 402356004)."),
        ("death", "Death", "Death of the patient.")]),
    "grading-system": ("Toxicity grading systems", [
        ("ctcae-v5", "CTCAE version 5.0", "Common Terminology Criteria for Adverse Events v5.0."),
        ("astct-2019", "ASTCT consensus grading (Lee 2019)", "ASTCT consensus grading for CRS and ICANS."),
        ("lee-2014", "Lee 2014 CRS grading", "Lee et al. 2014 CRS grading."),
        ("nih-2014", "NIH 2014 chronic GVHD global severity", "NIH consensus global severity of chronic GVHD: 1 mild, 2 moderate, 3 severe."),
        ("not-stated", "Grading system not stated by the source", "The source gives a grade but not the system.")]),
    "encounter-type": ("Hospital stays of interest", [
        ("picu-admission", "Admission to pediatric intensive care unit", "PICU admission.")]),
    "vital-status": ("Vital status", [("alive", "Alive", "Alive."), ("dead", "Dead", "Dead.")]),
    "disease-status": ("Disease status of B-ALL (seed papers 000, 002)", [
        ("refractory", "Refractory disease", "Primary refractory or refractory to the last line."),
        ("relapse", "Relapse (number not recorded)", "Relapse; the source does not give which."),
        ("relapse-1", "First relapse", "First relapse."),
        ("relapse-2", "Second relapse", "Second relapse."),
        ("relapse-3", "Third relapse", "Third relapse."),
        ("cr1-mrd-positive", "First complete remission with detectable MRD", "CR1 with persistent MRD (>= 10^-4), e.g. first-line refractory MRD (seed 004)."),
        ("cr2-mrd-positive", "Second complete remission with detectable MRD", "CR2 after a relapse, with persistent MRD (seed 004)."),
        ("progression", "Progressive disease", "Rising MRD, >= 5 % marrow blasts, > 25 % circulating blasts or new extramedullary disease (seed 002).")]),
    "blinatumomab-response": ("Response to blinatumomab (seed 002 definitions)", [
        ("cr-mrd-negative", "Complete remission with MRD negativity", "MRD < 0.01 % by flow with hematologic recovery."),
        ("mrd-clearance", "MRD clearance", "From detectable MRD (>= 0.01 %) to undetectable."),
        ("cr-mrd-positive", "Complete remission with detectable MRD", "Morphological complete remission (< 5 % marrow "
         "blasts) with MRD still >= 0.01 %: not counted as CR in the MRD-negative CR figure (seed 002), counted in "
         "morphological CR."),
        ("cr-mrd-unknown", "Complete remission, MRD not assessed", "Morphological complete remission without an MRD "
         "result: counted in morphological CR only."),
        ("pr", "Partial response", ">= 1-log MRD reduction, still detectable."),
        ("not-evaluable", "Not evaluable", "The response could not be assessed (e.g. death or withdrawal before the "
         "assessment)."),
        ("nr", "No response", "Less than a 1-log MRD reduction, or refractory disease (seed 001 'sin respuesta')."),
        ("pd", "Progressive disease", "Rising MRD, >= 5 % marrow blasts, > 25 % circulating blasts or new extramedullary disease.")]),
    "hla-match": ("Donor HLA match", [
        ("identical", "HLA-identical", "HLA-identical (matched) donor."),
        ("haploidentical", "Haploidentical", "Haploidentical related donor."),
        ("mismatched", "HLA-mismatched", "HLA-mismatched donor.")]),
    "hsct-donor-type": ("Transplant type", [("allogeneic", "Allogeneic", "Allogeneic."), ("autologous", "Autologous", "Autologous.")]),
    "therapy": ("Treatments before and after blinatumomab, and decisions to stop", [
        ("chemotherapy", "Chemotherapy", "A chemotherapy regimen (its name as written in the CodeableConcept's text)."),
        ("blinatumomab", "Blinatumomab", "A further course of blinatumomab outside the course under study."),
        ("inotuzumab", "Inotuzumab ozogamicin", "Inotuzumab ozogamicin."),
        ("car-t", "CAR-T cell therapy", "Chimeric antigen receptor T-cell therapy (e.g. tisagenlecleucel)."),
        ("tki", "Tyrosine kinase inhibitor", "A tyrosine kinase inhibitor (e.g. imatinib, dasatinib, ponatinib)."),
        ("radiotherapy", "Radiotherapy", "Radiotherapy, including total body or cranial irradiation."),
        ("hsct", "Hematopoietic stem-cell transplant", "A transplant named as a line (the graft itself is a pedall-hsct Procedure)."),
        ("palliative-care", "Palliative care", "Care aimed at comfort rather than cure: no further antileukemic treatment."),
        ("treatment-abandoned", "Treatment abandoned", "The family or the team stopped treatment (abandonment).")]),
    "therapy-intent": ("Why a therapy was given, relative to blinatumomab", [
        ("prior", "Prior line", "A line of therapy before blinatumomab."),
        ("bridging", "Bridging", "Between blinatumomab and HSCT, to keep remission until the transplant."),
        ("consolidation", "Consolidation", "After a remission, to consolidate it."),
        ("salvage", "Salvage", "For relapse or refractory disease after blinatumomab."),
        ("maintenance", "Maintenance", "Maintenance therapy (e.g. after HSCT).")]),
    "donor-relatedness": ("Whether an allogeneic donor is a relative (v3-RoleCode names the relative when known)", [
        ("related", "Related donor", "A family member (v3-RoleCode gives which one when the site says)."),
        ("unrelated", "Unrelated donor", "An unrelated volunteer donor (registry), adult or cord blood.")]),
    "hsct-outcome": ("Events of a graft after its infusion (day 0)", [
        ("neutrophil-engraftment", "Neutrophil engraftment", "First of three consecutive days with an absolute "
         "neutrophil count >= 0.5 x 10^9/L, as the site recorded it (a day count after day 0, or a date)."),
        ("platelet-engraftment", "Platelet engraftment", "First day of a platelet count >= 20 x 10^9/L without "
         "transfusion, as the site recorded it."),
        ("graft-failure", "Graft failure", "Primary or secondary graft failure, as the site recorded it.")]),
    "response-method": ("How a response Observation was obtained", [
        ("derived-from-mrd", "Derived from MRD results", "Derived by the adapter from the site's MRD results before "
         "and after blinatumomab, because the site records no response (seed 002 definitions: MRD-negative after the "
         "last cycle is CR with MRD negativity, or MRD clearance when the burden before was below 1 %; a 1-log "
         "reduction that stays detectable is PR; otherwise PD). derivedFrom names the MRD Observations read.")]),
    "stem-cell-source": ("Stem-cell source", [
        ("pbsc", "Mobilized peripheral blood stem cells", "Mobilized peripheral blood."),
        ("bone-marrow", "Bone marrow", "Bone marrow."),
        ("cord-blood", "Umbilical cord blood", "Umbilical cord blood.")]),
}

# ValueSets: whole project CodeSystems, plus two enumerations of external codes.
VALUESETS: dict[str, list[dict[str, Any]]] = {name: [{"system": CS + name}] for name in CODESYSTEMS}
VALUESETS["mrd-interpretation"] = [{"system": V3_INTERP, "concept": [
    {"code": "POS", "display": "Positive"}, {"code": "NEG", "display": "Negative"},
    {"code": "IND", "display": "Indeterminate"}]}]
VALUESETS["infusion-setting"] = [{"system": MAC, "concept": [
    {"code": "inpatient", "display": "Inpatient"}, {"code": "outpatient", "display": "Outpatient"},
    {"code": "community", "display": "Community"}]}]

EXTENSIONS = {  # id: (title, value type, context, value set or None)
    "measure-score-ci": ("95 % confidence interval of a measure score (Wilson for proportions, "
                         "exponential Greenwood for Kaplan-Meier)", "Range",
                         ["MeasureReport.group", "MeasureReport.group.stratifier.stratum"], None),
    "treatment-cycle": ("Blinatumomab cycle number", "integer",
                        ["MedicationAdministration", "MedicationDispense", "Observation", "AdverseEvent"], None),
    "standard-course-quantity": ("Vials a standard 28-day course would need (seed 002 TABLE 2)", "Quantity",
                                 ["MedicationDispense"], None),
    "ae-grade": ("Adverse event grade (0-5)", "integer", ["AdverseEvent"], None),
    "ae-grading-system": ("Grading system of the grade", "CodeableConcept", ["AdverseEvent"], "grading-system"),
    "cause-of-death": ("Cause of death", "CodeableConcept", ["AdverseEvent"], "adverse-event-term"),
    "hsct-donor-relationship": ("Donor's relationship to the patient (v3-RoleCode)", "CodeableConcept", ["Procedure"], None),
    "hsct-hla-match": ("Donor HLA match", "CodeableConcept", ["Procedure"], "hla-match"),
    "hsct-donor-type": ("Allogeneic or autologous", "CodeableConcept", ["Procedure"], "hsct-donor-type"),
    "treatment-line": ("Line of therapy number as the site gives it (1 = first line)", "integer", ["Procedure"], None),
    "hsct-conditioning": ("The conditioning regimen, as the site wrote it (text), coded when a code table gives it",
                          "CodeableConcept", ["Procedure"], None),
    "source-row": ("Source file row a resource came from", "string", ["Reference"], None),
}


def el(path: str, **kw: Any) -> dict[str, Any]:
    return {"id": path, "path": path, **kw}


def pattern(path: str, system: str, code: str) -> dict[str, Any]:
    return el(path, min=1, patternCodeableConcept={"coding": [{"system": system, "code": code}]})


def required(path: str, vs: str, min_: int = 0) -> dict[str, Any]:
    return el(path, min=min_, binding={"strength": "required", "valueSet": VS + vs})


def ext_slice(base: str, name: str, min_: int = 0, max_: str = "1") -> dict[str, Any]:
    return {"id": f"{base}.extension:{name}", "path": f"{base}.extension", "sliceName": name,
            "min": min_, "max": max_, "type": [{"code": "Extension", "profile": [SD + name]}]}


def ext_slicing(base: str) -> dict[str, Any]:
    return el(f"{base}.extension", slicing={"discriminator": [{"type": "value", "path": "url"}], "rules": "open"})


PROFILES: dict[str, tuple[str, str, list[dict[str, Any]]]] = {
    "pedall-patient": ("Patient", "Patient of a participating site; names and contact details are never stored", [
        el("Patient.identifier", min=1), el("Patient.identifier.system", min=1), el("Patient.identifier.value", min=1),
        el("Patient.name", max="0"), el("Patient.telecom", max="0"), el("Patient.address", max="0"),
        el("Patient.photo", max="0"), el("Patient.contact", max="0"), el("Patient.managingOrganization", min=1)]),
    "pedall-organization": ("Organization", "A participating site", [
        el("Organization.identifier", min=1), el("Organization.name", min=1)]),
    "pedall-mrd": ("Observation", "Measurable residual disease (MRD) in bone marrow, % of nucleated cells", [
        el("Observation", constraint=[{
            "key": "mrd-1", "severity": "error",
            "human": "a quantified MRD result, or the reason it has no number (positive, not quantifiable)",
            "expression": "value.exists() or dataAbsentReason.exists()"}]),
        ext_slicing("Observation"), ext_slice("Observation", "treatment-cycle"),
        el("Observation.status", min=1), el("Observation.category", min=2),
        pattern("Observation.code", CS + "observation-code", "mrd"),
        el("Observation.subject", min=1), el("Observation.effective[x]", min=1, type=[{"code": "dateTime"}]),
        el("Observation.value[x]", type=[{"code": "Quantity"}]),
        el("Observation.valueQuantity.value", min=1),
        el("Observation.valueQuantity.system", min=1, fixedUri="http://unitsofmeasure.org"),
        el("Observation.valueQuantity.code", min=1, fixedCode="%"),
        required("Observation.interpretation", "mrd-interpretation", 1) | {"max": "1"},
        required("Observation.method", "mrd-method", 1), el("Observation.specimen", min=1)]),
    "pedall-disease-status": ("Observation", "Cancer disease status of B-ALL (modelled on mCODE 4.0.0 cancer disease status)", [
        el("Observation.status", min=1), required("Observation.category", "assessment-timepoint", 1),
        pattern("Observation.code", "http://loinc.org", "97509-4"), el("Observation.subject", min=1),
        el("Observation.focus", min=1), el("Observation.value[x]", min=1, type=[{"code": "CodeableConcept"}]),
        required("Observation.valueCodeableConcept", "disease-status", 1)]),
    "pedall-response": ("Observation", "Response to blinatumomab (seed 002 definitions)", [
        el("Observation.status", min=1), pattern("Observation.code", CS + "observation-code", "blinatumomab-response"),
        el("Observation.subject", min=1), el("Observation.value[x]", min=1, type=[{"code": "CodeableConcept"}]),
        required("Observation.valueCodeableConcept", "blinatumomab-response", 1)]),
    "pedall-vital-status": ("Observation", "Vital status at the last follow-up", [
        el("Observation.status", min=1), pattern("Observation.code", CS + "observation-code", "vital-status"),
        el("Observation.subject", min=1), el("Observation.effective[x]", min=1, type=[{"code": "dateTime"}]),
        el("Observation.value[x]", min=1, type=[{"code": "CodeableConcept"}]),
        required("Observation.valueCodeableConcept", "vital-status", 1)]),
    "pedall-blinatumomab-infusion": ("MedicationAdministration", "A blinatumomab continuous infusion (one dose step of a cycle)", [
        ext_slicing("MedicationAdministration"), ext_slice("MedicationAdministration", "treatment-cycle", 1),
        required("MedicationAdministration.category", "infusion-setting"),
        el("MedicationAdministration.medication[x]", min=1, type=[{"code": "CodeableConcept"}]),
        pattern("MedicationAdministration.medicationCodeableConcept", "http://www.nlm.nih.gov/research/umls/rxnorm", "1597258"),
        el("MedicationAdministration.subject", min=1),
        el("MedicationAdministration.effective[x]", min=1, type=[{"code": "Period"}]),
        el("MedicationAdministration.effectivePeriod.start", min=1),
        el("MedicationAdministration.dosage.rateQuantity.system", fixedUri="http://unitsofmeasure.org"),
        el("MedicationAdministration.dosage.rateQuantity.code", fixedCode="ug/m2/d")]),
    "pedall-blinatumomab-dispense": ("MedicationDispense", "Blinatumomab vials used for one cycle", [
        ext_slicing("MedicationDispense"), ext_slice("MedicationDispense", "treatment-cycle", 1),
        ext_slice("MedicationDispense", "standard-course-quantity"),
        el("MedicationDispense.medication[x]", min=1, type=[{"code": "CodeableConcept"}]),
        pattern("MedicationDispense.medicationCodeableConcept", "http://www.nlm.nih.gov/research/umls/rxnorm", "1597258"),
        el("MedicationDispense.subject", min=1), el("MedicationDispense.quantity", min=1),
        el("MedicationDispense.quantity.value", min=1),
        el("MedicationDispense.quantity.system", min=1, fixedUri="http://unitsofmeasure.org"),
        el("MedicationDispense.quantity.code", min=1, fixedCode="{vial}")]),
    "pedall-adverse-event": ("AdverseEvent", "An adverse event (CRS, ICANS, infection, death...) with its grade", [
        ext_slicing("AdverseEvent"), ext_slice("AdverseEvent", "ae-grade"), ext_slice("AdverseEvent", "ae-grading-system"),
        ext_slice("AdverseEvent", "treatment-cycle"), ext_slice("AdverseEvent", "cause-of-death"),
        el("AdverseEvent.event", min=1), el("AdverseEvent.subject", min=1),
        el("AdverseEvent.date", short="When it occurred: every toxicity has one; a death of unknown date has none "
                                      "(Patient.deceasedBoolean carries it)")]),
    "pedall-observation": ("Observation", "Any clinical finding of a patient (marrow blasts, cytogenetics, a marker, a "
                           "count) at a date or an assessment time point, with one value", [
        el("Observation.status", min=1), el("Observation.code", min=1), el("Observation.subject", min=1),
        el("Observation.value[x]", min=1)]),
    "pedall-encounter": ("Encounter", "An inpatient stay of interest (e.g. PICU admission)", [
        required("Encounter.type", "encounter-type", 1), el("Encounter.subject", min=1),
        el("Encounter.period", min=1), el("Encounter.period.start", min=1)]),
    "pedall-hsct": ("Procedure", "Hematopoietic stem-cell transplant", [
        ext_slicing("Procedure"), ext_slice("Procedure", "hsct-donor-relationship"),
        ext_slice("Procedure", "hsct-hla-match"), ext_slice("Procedure", "hsct-donor-type"),
        ext_slice("Procedure", "hsct-conditioning"),
        pattern("Procedure.code", "http://snomed.info/sct", "234336002"), el("Procedure.subject", min=1),
        el("Procedure.performed[x]", min=1, type=[{"code": "dateTime"}]),
        required("Procedure.usedCode", "stem-cell-source")]),
    "pedall-therapy": ("Procedure", "A line of therapy before or after blinatumomab (or a decision to stop treatment)", [
        ext_slicing("Procedure"), ext_slice("Procedure", "treatment-line"),
        required("Procedure.code", "therapy", 1), required("Procedure.category", "therapy-intent"),
        el("Procedure.subject", min=1)]),
    "pedall-diagnosis": ("Condition", "The leukemia diagnosis", [
        el("Condition.code", min=1), el("Condition.subject", min=1)]),
    "pedall-provenance": ("Provenance", "What an ingestion changed, from which file (SHA-256) and rows", [
        el("Provenance.agent", min=1), el("Provenance.agent.who", min=1), el("Provenance.entity", min=1),
        el("Provenance.entity.what.identifier", min=1)]),
    "pedall-patient-group": ("Group", "The patients of a site, or of the whole study cohort (Bulk Data Group export)", [
        el("Group.identifier", min=1), el("Group.type", fixedCode="person"), el("Group.quantity", min=1)]),
    "pedall-research-study": ("ResearchStudy", "The network's study", [
        el("ResearchStudy.identifier", min=1), el("ResearchStudy.title", min=1)]),
    "pedall-research-subject": ("ResearchSubject", "A Patient enrolled in the study", [
        el("ResearchSubject.individual", min=1)]),
}


def structure_definition(pid: str, rtype: str, title: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    """A profile of ``rtype`` with the differential ``elements``. Raises ValueError when an element
    id appears twice (R4 invariant sdf-17: element ids are unique within the differential)."""
    seen = [e["id"] for e in elements]
    if len(seen) != len(set(seen)):
        raise ValueError(f"{pid}: element ids twice in the differential (sdf-17): "
                         f"{sorted({i for i in seen if seen.count(i) > 1})}")
    return {"resourceType": "StructureDefinition", "id": pid, "url": SD + pid, "version": "0.1.0",
            "name": "".join(p.capitalize() for p in pid.split("-")), "title": title, "status": "draft",
            "fhirVersion": "4.0.1", "kind": "resource", "abstract": False, "type": rtype,
            "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{rtype}", "derivation": "constraint",
            "differential": {"element": elements}}


def extension_definition(eid: str, title: str, vtype: str, contexts: list[str], vs: str | None) -> dict[str, Any]:
    value = {"id": "Extension.value[x]", "path": "Extension.value[x]", "min": 1, "type": [{"code": vtype}]}
    if vs:
        value["binding"] = {"strength": "required", "valueSet": VS + vs}
    return {"resourceType": "StructureDefinition", "id": eid, "url": SD + eid, "version": "0.1.0",
            "name": "".join(p.capitalize() for p in eid.split("-")), "title": title, "status": "draft",
            "fhirVersion": "4.0.1", "kind": "complex-type", "abstract": False,
            "context": [{"type": "element", "expression": c} for c in contexts], "type": "Extension",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Extension", "derivation": "constraint",
            "differential": {"element": [
                {"id": "Extension", "path": "Extension", "short": title, "max": "1"},
                {"id": "Extension.url", "path": "Extension.url", "fixedUri": SD + eid}, value]}}


def codesystem(name: str, title: str, concepts: list[tuple[str, str, str]]) -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "id": name, "url": CS + name, "version": "0.1.0",
            "name": "".join(p.capitalize() for p in name.split("-")), "title": title, "status": "draft",
            "caseSensitive": True, "content": "complete", "count": len(concepts),
            "concept": [{"code": c, "display": d, "definition": df} for c, d, df in concepts]}


def valueset(name: str, include: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "ValueSet", "id": name, "url": VS + name, "version": "0.1.0",
            "name": "".join(p.capitalize() for p in name.split("-")), "status": "draft",
            "compose": {"include": include}}


def examples() -> dict[str, list[dict[str, Any]]]:
    """One or more examples per profile, produced by the mapping modules from made-up inputs."""
    site = SiteContext("example", "Example Children's Hospital", "MX", 0.01, True, "example-key")
    c = lambda s, code, d=None: Concept(CS + s if not s.startswith("http") else s, code, d)  # noqa: E731
    pat = patient.PatientInput(patient="X0001", gender=Concept("http://hl7.org/fhir/administrative-gender", "female"),
                               birthDate=date(2012, 1, 15))
    out: dict[str, list[dict[str, Any]]] = {
        "pedall-organization": [patient.organization(site)],
        "pedall-patient": patient.to_patient(pat, site),
        "pedall-mrd": mrd.to_mrd_observation(mrd.MRDInput(
            patient="X0001", identifier="LAB-1", effectiveDateTime=date(2020, 3, 1),
            valueQuantity=MRDValue(Decimal("0.01"), "<"), method=c("mrd-method", "flow-cytometry"),
            specimen=c("specimen-type", "bone-marrow"), timepoint=c("assessment-timepoint", "post-cycle"), cycle=1), site)
        + mrd.to_mrd_observation(mrd.MRDInput(  # RQ-PCR, positive not quantifiable (seed 004)
            patient="X0001", identifier="LAB-2", effectiveDateTime=date(2020, 3, 29),
            valueQuantity=MRDValue(None), method=c("mrd-method", "rq-pcr"),
            specimen=c("specimen-type", "bone-marrow"), timepoint=c("assessment-timepoint", "post-cycle"), cycle=2), site),
        "pedall-blinatumomab-infusion": infusion.to_medication_administrations(infusion.InfusionInput(
            patient="X0001", cycle=1, start=date(2020, 2, 1), end=date(2020, 2, 28), dose_rate=Decimal(5),
            escalated_dose_rate=Decimal(15), escalation_day=8,
            setting=Concept("http://terminology.hl7.org/CodeSystem/medication-admin-category", "outpatient")), site),
        "pedall-blinatumomab-dispense": dispense.to_medication_dispense(dispense.DispenseInput(
            patient="X0001", cycle=1, quantity=6, standard_course_quantity=10, whenHandedOver=date(2020, 2, 1)), site),
        "pedall-adverse-event": adverse_event.to_adverse_event(adverse_event.AdverseEventInput(
            patient="X0001", date=date(2020, 2, 2), event=c("adverse-event-term", "crs", "Cytokine release syndrome"),
            grade=2, grading_system=c("grading-system", "astct-2019"), related=True, cycle=1,
            outcome=Concept("http://terminology.hl7.org/CodeSystem/adverse-event-outcome", "resolved")), site)
        + adverse_event.to_death(adverse_event.DeathInput(
            patient="X0001", date=date(2021, 1, 5), cause=c("adverse-event-term", "sepsis", "Sepsis")), site)[:1],
        "pedall-observation": hsct.to_graft_event(hsct.GraftEventInput(  # neutrophil engraftment on day +14
            patient="X0001", number=1, event=c("hsct-outcome", "neutrophil-engraftment"), day=14,
            graft_date=date(2020, 4, 1)), site)
        + observation.to_observation(observation.ObservationInput(  # marrow blasts (LOINC)
            patient="X0001", code=Concept("http://loinc.org", "11150-0", "Blasts/100 cells in Bone marrow",
                                          {"category": "laboratory"}),
            effectiveDateTime=date(2020, 1, 30), value_quantity=Measured(Decimal("4.5")), unit="%"), site)
        + observation.to_observation(observation.ObservationInput(  # a fusion gene, as the site wrote it
            patient="X0001", code=Concept(CS + "observation-code", "fusion-gene", "Fusion gene"),
            timepoint=c("assessment-timepoint", "diagnosis"), value_string="ETV6-RUNX1"), site),
        "pedall-encounter": adverse_event.to_encounter(adverse_event.EncounterInput(
            patient="X0001", start=date(2020, 2, 2), end=date(2020, 2, 5), type=c("encounter-type", "picu-admission")), site),
        "pedall-hsct": hsct.to_hsct_procedure(hsct.HSCTInput(
            patient="X0001", performedDateTime=date(2020, 4, 1),
            donor_relationship=Concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH", "mother"),
            hla_match=c("hla-match", "haploidentical"), stem_cell_source=c("stem-cell-source", "pbsc"),
            donor_type=c("hsct-donor-type", "allogeneic")), site)
        + hsct.to_hsct_procedure(hsct.HSCTInput(  # a second graft: unrelated, 9/10, bone marrow + PBSC, conditioning
            patient="X0001", performedDateTime=date(2020, 9, 1), number=2,
            donor_relationship=c("donor-relatedness", "unrelated"), hla_match=HLAMatch("9/10", 9, 10, "mismatched"),
            stem_cell_source=[c("stem-cell-source", "bone-marrow"), c("stem-cell-source", "pbsc")],
            donor_type=c("hsct-donor-type", "allogeneic"), conditioning="TBI 12 Gy + etoposide"), site),
        "pedall-therapy": therapy.to_therapy(therapy.TherapyInput(  # a prior line, then CAR-T after blinatumomab
            patient="X0001", therapy=c("therapy", "chemotherapy"), intent=c("therapy-intent", "prior"), text="BFM 2002",
            line=1, start=date(2018, 5, 10), end=date(2019, 6, 1)), site)
        + therapy.to_therapy(therapy.TherapyInput(
            patient="X0001", therapy=c("therapy", "car-t"), intent=c("therapy-intent", "salvage"), start=date(2021, 2, 1)), site),
        "pedall-diagnosis": disease.to_diagnosis(disease.DiagnosisInput(
            patient="X0001", code=Concept("http://snomed.info/sct", "277571004", "B-cell acute lymphoblastic leukemia"),
            onsetDateTime=date(2018, 5, 2)), site),
        "pedall-disease-status": disease.to_disease_status(disease.DiseaseStatusInput(
            patient="X0001", status=c("disease-status", "relapse-1"), timepoint=c("assessment-timepoint", "pre-treatment"),
            effectiveDateTime=date(2020, 2, 1), prior_lines=2), site),
        "pedall-response": disease.to_response(disease.ResponseInput(
            patient="X0001", response=c("blinatumomab-response", "cr-mrd-negative"), effectiveDateTime=date(2020, 2, 28),
            cycle=1), site),
        "pedall-vital-status": disease.to_follow_up(disease.FollowUpInput(
            patient="X0001", last_contact=date(2023, 6, 1), vital_status=c("vital-status", "alive")), site),
    }
    from adapter.ingest import provenance_for  # the same builder ingestion uses
    from adapter.mapping import study

    pid = out["pedall-patient"][0]["id"]
    out["pedall-research-study"] = [study.research_study("example-study", "An example study")]
    out["pedall-research-subject"] = [study.research_subject(site, pid, "example-study")]
    out["pedall-patient-group"] = [study.patient_group(study.site_group_id(site.site), "Patients of the example site",
                                                       [pid], site.site)]

    out["pedall-provenance"] = [provenance_for(site, "example.csv", "0" * 64, [
        ("Patient", out["pedall-patient"][0]["id"], 1, "example.csv!2")], "2020-01-01T00:00:00+00:00")]
    return out


#: Measures evaluated by GET /Measure/{id}/$evaluate-measure (adapter/outcomes/measure.py). Each
#: group's code.text is the figure of the default analysis plan (plans/default.yaml) it carries.
MEASURE_GROUPS = {
    "blinatumomab-outcomes": ("Response, MRD, HSCT, toxicity and deaths after blinatumomab", "proportion", [
        ("cr", "CR (CR with MRD negativity or MRD clearance; seed 002)", "cr"),
        ("mrd-negative-after", "MRD < 0.01 % after blinatumomab (site threshold)", "mrd_negative_after"),
        ("mrd-clearance", "MRD clearance among MRD-positive patients with < 1 % blasts", "mrd_clearance"),
        ("hsct", "Proceeded to HSCT", "hsct"),
        ("crs-any", "CRS, any grade", "crs_any"),
        ("crs-grade-3-plus", "CRS grade 3 or more", "crs_grade_3_plus"),
        ("icans-any", "ICANS, any grade", "icans_any"),
        ("death", "Deaths, any cause", "deaths"),
    ]),
    "blinatumomab-survival": ("Kaplan-Meier survival from the start of blinatumomab", "cohort", [
        ("os", "Overall survival (REFERENCE.md section 8)", "os"),
        ("rfs", "Relapse-free survival: relapse, progression or death (seed 002)", "rfs"),
    ]),
}


def measure(mid: str, title: str, scoring: str, groups: list[tuple[str, str, str]]) -> dict[str, Any]:
    """A Measure defined by the default plan: its Library, and each group's populations with the
    plan's SQL as criteria (adapter/outcomes/measure.py ``measure_groups``)."""
    from adapter.analysis.plan import load_plan
    from adapter.analysis.verify import DEFAULT_PLAN
    from adapter.outcomes.measure import LIBRARY, measure_groups

    m = {"resourceType": "Measure", "id": mid, "url": f"{CANONICAL}/Measure/{mid}", "version": "0.1.0",
         "name": "".join(p.capitalize() for p in mid.split("-")), "title": title, "status": "draft",
         "subjectCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/resource-types", "code": "Patient"}]},
         "scoring": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-scoring", "code": scoring}]},
         "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-type", "code": "outcome"}]}],
         "description": f"{title}. Defined by the analysis plan plans/default.yaml (Library pedall-default-plan) over the "
                        "SQL on FHIR views of views/: each group's code.text is a figure of the plan, and each population's "
                        "criteria are the plan's SQL over the view tables. The pooled figure is the group score and each "
                        "site a stratum of the stratifier 'site'.",
         "library": [LIBRARY],
         "group": [{"id": gid, "description": desc, "code": {"text": fid}} for gid, desc, fid in groups]}
    m["group"] = measure_groups(load_plan(DEFAULT_PLAN), m)
    return m


def library() -> dict[str, Any]:
    """The default analysis plan as a FHIR Library: its YAML by URL, and the views it depends on."""
    from adapter.outcomes.measure import LIBRARY, PLAN_URL

    views = sorted(json.loads(p.read_text(encoding="utf-8"))["url"] for p in (HERE.parent / "views").glob("*.json"))
    return {"resourceType": "Library", "id": "pedall-default-plan", "url": LIBRARY, "version": "0.1.0",
            "name": "PedallDefaultPlan", "title": "The facade's figures as an analysis plan over SQL on FHIR views",
            "status": "draft",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "asset-collection"}]},
            "description": "plans/default.yaml: the figures of GET /outcomes (demographics and age, exposure and vials, "
                           "MRD before and after blinatumomab, responses overall and by status and cycles, HSCT with donor, "
                           "bridging and engraftment, toxicity by term and worst grade, deaths and causes, therapies, "
                           "Kaplan-Meier OS and RFS from blinatumomab and from HSCT, follow-up, heterogeneity across sites) "
                           "declared as an analysis plan: per-patient variables and figures in SQL over the tables of the "
                           "SQL on FHIR v2 ViewDefinitions it depends on, which read standard FHIR R4 elements and the "
                           "project's published CodeSystems only. Run it with adapter plan plans/default.yaml EXPORT_DIR "
                           "(DuckDB) or over the same views on any SQL on FHIR engine; the Measures blinatumomab-outcomes "
                           "and blinatumomab-survival are defined by its figures.",
            "relatedArtifact": [{"type": "depends-on", "display": u.rsplit("/", 1)[1], "resource": u} for u in views],
            "content": [{"contentType": "application/yaml", "url": PLAN_URL, "title": "plans/default.yaml"}]}


def build() -> dict[Path, str]:
    files: dict[Path, Any] = {}
    for pid, (rtype, title, elements) in PROFILES.items():
        files[HERE / f"StructureDefinition-{pid}.json"] = structure_definition(pid, rtype, title, elements)
    for eid, (title, vtype, ctxs, vs) in EXTENSIONS.items():
        files[HERE / f"StructureDefinition-{eid}.json"] = extension_definition(eid, title, vtype, ctxs, vs)
    for name, (title, concepts) in CODESYSTEMS.items():
        files[HERE / f"CodeSystem-{name}.json"] = codesystem(name, title, concepts)
    for name, include in VALUESETS.items():
        files[HERE / f"ValueSet-{name}.json"] = valueset(name, include)
    for mid, (title, scoring, groups) in MEASURE_GROUPS.items():
        files[HERE / f"Measure-{mid}.json"] = measure(mid, title, scoring, groups)
    files[HERE / "Library-pedall-default-plan.json"] = library()
    for pid, resources in examples().items():
        for n, res in enumerate(resources, start=1):
            files[HERE / "examples" / f"{pid}-{n}.json"] = res
    return {p: json.dumps(v, indent=2, ensure_ascii=False) + "\n" for p, v in files.items()}


if __name__ == "__main__":
    for path, text in build().items():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(build())} files")  # noqa: T201
