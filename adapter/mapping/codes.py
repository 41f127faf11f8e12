"""Codes the mapping modules emit themselves (not looked up in site code tables).

Every project code lives in a CodeSystem under ``profiles/`` (a test checks each one used here is
defined there). Standard codes cite ``../shared/REFERENCE.md`` sections.
"""

from adapter.mapping.fhir import CS, LOINC, RXNORM, coding

OBSERVATION_CODE = CS + "observation-code"
TIMEPOINT = CS + "assessment-timepoint"
MRD_METHOD = CS + "mrd-method"
AE_TERM = CS + "adverse-event-term"
GRADING = CS + "grading-system"
ENCOUNTER_TYPE = CS + "encounter-type"
VITAL_STATUS = CS + "vital-status"

MRD = coding(OBSERVATION_CODE, "mrd", "Measurable residual disease, % of nucleated cells in bone marrow")
RESPONSE = coding(OBSERVATION_CODE, "blinatumomab-response", "Response to blinatumomab")
VITAL = coding(OBSERVATION_CODE, "vital-status", "Vital status at last follow-up")
PRIOR_LINES = coding(OBSERVATION_CODE, "prior-therapy-lines", "Number of previous treatment lines")
#: mCODE 4.0.0 SD_DiseaseStatus code (REFERENCE.md §1)
DISEASE_STATUS = coding(LOINC, "97509-4", "Cancer disease status")
#: RxNorm ingredient (REFERENCE.md §3)
BLINATUMOMAB = coding(RXNORM, "1597258", "blinatumomab")
#: SNOMED CT (REFERENCE.md §2)
HSCT = coding("http://snomed.info/sct", "234336002", "Hemopoietic stem cell transplant")
DEATH = coding(AE_TERM, "death", "Death")
PICU = coding(ENCOUNTER_TYPE, "picu-admission", "Admission to pediatric intensive care unit")
