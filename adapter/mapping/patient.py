"""Patient (FHIR R4 §8.1 Patient) and the site's Organization.

Names are never mapped or stored. The site's own record number is the Patient identifier, in a
site-scoped identifier system ``{CANONICAL}/sid/{site}/patient``.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from adapter.mapping import fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Age
from adapter.mapping.transforms import Concept as Coded


def organization(site: SiteContext) -> dict[str, Any]:
    """The site's Organization; its id is the site code."""
    org = fhir.profiled("Organization", site.site, "pedall-organization")
    org.update({
        "identifier": [{"system": fhir.SID + "site", "value": site.site}],
        "active": True,
        "name": site.name,
        "address": [{"country": site.country}],
    })
    return org


def partial_birth_date(age: Age, on: date) -> str:
    """Birth date implied by an age on a date, only as precise as the age: a whole number of years
    gives ``YYYY``; months, weeks, days or a decimal number of years give ``YYYY-MM`` (FHIR ``date``
    allows partial dates, R4 §2.24.0.1). The result is approximate: someone aged N years on ``on``
    was born in ``on.year - N`` or the year before (the later year is given); a decimal age is
    counted back at 365.25 days a year (30.4375 a month) and given to the month."""
    if age.unit == "a" and isinstance(age.value, int):
        return f"{on.year - age.value:04d}"
    if isinstance(age.value, Decimal):
        days = {"a": Decimal("365.25"), "mo": Decimal("30.4375"), "wk": Decimal(7), "d": Decimal(1)}[age.unit]
        born = on - timedelta(days=int((age.value * days).to_integral_value()))
        return f"{born.year:04d}-{born.month:02d}"
    back = {"mo": age.value, "wk": age.value * 7 // 30, "d": age.value // 30}[age.unit]
    months = on.year * 12 + (on.month - 1) - back
    return f"{months // 12:04d}-{months % 12 + 1:02d}"


class PatientInput(ConceptInput):
    """``gender`` from a code table whose codes are FHIR administrative-gender; ``birthDate`` when
    known, else ``age`` on ``age_reference_date`` gives a partial birth date."""

    gender: Coded | None = None
    birthDate: date | None = None
    age: Age | None = None
    age_reference_date: date | None = None
    deceasedDateTime: date | None = None
    deceased: bool | None = None


def patient_identity(patient: str, site: SiteContext) -> dict[str, Any]:
    """A Patient with only what identifies it: id, profile, the site's record number as identifier
    and the managing Organization (the site)."""
    pat = fhir.profiled("Patient", site.patient_id(patient), "pedall-patient")
    pat["identifier"] = [{
        "use": "usual",
        "type": {"coding": [fhir.coding("http://terminology.hl7.org/CodeSystem/v2-0203", "MR",
                                         "Medical record number")]},
        "system": f"{fhir.SID}{site.site}/patient",
        "value": patient,
    }]
    pat["managingOrganization"] = fhir.ref("Organization", site.site)
    return pat


@concept("patient", PatientInput, ("Patient",))
def to_patient(inp: PatientInput, site: SiteContext) -> list[dict[str, Any]]:
    """Patient: identifier, gender, birthDate (partial if only an age is known), deceased[x],
    managingOrganization. Raises ``ValueError`` when an age has no reference date."""
    pat = patient_identity(inp.patient, site)
    org = pat.pop("managingOrganization")
    if inp.gender is not None:
        pat["gender"] = inp.gender.code
    if inp.birthDate is not None:
        pat["birthDate"] = fhir.fhir_date(inp.birthDate)
    elif inp.age is not None:
        if inp.age_reference_date is None:
            raise ValueError("an age needs age_reference_date to give a birth date")
        pat["birthDate"] = partial_birth_date(inp.age, inp.age_reference_date)
    if inp.deceasedDateTime is not None:
        pat["deceasedDateTime"] = fhir.fhir_date(inp.deceasedDateTime)
    elif inp.deceased is not None:
        pat["deceasedBoolean"] = inp.deceased
    pat["managingOrganization"] = org
    return [pat]
