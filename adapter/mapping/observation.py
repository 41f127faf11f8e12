"""Any clinical finding per patient: ``observation`` (profile ``pedall-observation``).

What the first sites' exports did not have a concept for (marrow blasts, cytogenetics, white-cell
counts, fusion genes, a marker positive or negative) is mapped here rather than dropped: the
finding's ``code`` comes from a code table (LOINC where a code is confirmed, e.g. 11150-0 "Blasts/100
cells in Bone marrow", REFERENCE.md §1; otherwise a project or site code, with a standard code kept
as data in the entry's ``extra`` for the day one is confirmed), at a date or an assessment time point,
with one value: a Quantity with its UCUM unit and comparator (``<0.01``, ``>95`` are kept censored,
never made exact), a CodeableConcept, a string, a boolean or an integer.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from adapter.mapping import fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded
from adapter.mapping.transforms import Measured

OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


class ObservationInput(ConceptInput):
    """``code`` of the finding (a code table: the coding, plus ``extra.loinc`` / ``extra.snomed``
    standard codes and ``extra.category``, an observation-category code such as ``laboratory``);
    ``effectiveDateTime`` and/or ``timepoint`` (assessment-timepoint); exactly one value:
    ``value_quantity`` (a number, or :class:`Measured` with its comparator) with ``unit`` (a UCUM
    code, e.g. ``%``, ``10*3/uL``), ``value_concept``, ``value_string``, ``value_boolean`` or
    ``value_integer``; ``occurrence`` tells two findings of one code on one date apart."""

    code: Coded
    effectiveDateTime: date | None = None
    timepoint: Coded | None = None
    value_quantity: Measured | Decimal | None = None
    unit: str | None = None
    value_concept: Coded | None = None
    value_string: str | None = None
    value_boolean: bool | None = None
    value_integer: int | None = None
    occurrence: int = 1


def _codings(c: Coded) -> list[dict[str, str]]:
    out = [c.coding()]
    for key, system in (("loinc", fhir.LOINC), ("snomed", fhir.SNOMED)):
        std = c.extra.get(key)
        if std:
            out.append(fhir.coding(system, str(std["code"]), std.get("display")))
    return out


@concept("observation", ObservationInput, ("Observation",))
def to_observation(inp: ObservationInput, site: SiteContext) -> list[dict[str, Any]]:
    """One Observation. Raises ``ValueError`` when no value or more than one is given, when a
    quantity has no unit, or when neither a date nor a time point says when it was found."""
    values = [v for v in (inp.value_quantity, inp.value_concept, inp.value_string, inp.value_boolean,
                          inp.value_integer) if v is not None]
    if len(values) != 1:
        raise ValueError(f"an observation takes exactly one value (got {len(values)})")
    if inp.value_quantity is not None and not inp.unit:
        raise ValueError("a quantity needs its unit (a UCUM code)")
    if inp.effectiveDateTime is None and inp.timepoint is None:
        raise ValueError("an observation needs a date or an assessment time point")
    when = inp.effectiveDateTime.isoformat() if inp.effectiveDateTime else f"tp:{inp.timepoint.code if inp.timepoint else ''}"
    obs = fhir.profiled("Observation", site.id("observation", inp.patient, inp.code.system or "", inp.code.code or "",
                                               when, inp.occurrence), "pedall-observation")
    obs["status"] = "final"
    category = []
    kind = inp.code.extra.get("category")
    if kind:
        category.append(fhir.concept(fhir.coding(OBS_CATEGORY, str(kind))))
    if inp.timepoint is not None:
        category.append(fhir.concept(inp.timepoint.coding()))
    if category:
        obs["category"] = category
    obs["code"] = fhir.concept(*_codings(inp.code), text=inp.code.display)
    obs["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if inp.effectiveDateTime is not None:
        obs["effectiveDateTime"] = fhir.fhir_date(inp.effectiveDateTime)
    if inp.value_quantity is not None:
        m = inp.value_quantity if isinstance(inp.value_quantity, Measured) else Measured(inp.value_quantity)
        q: dict[str, Any] = {"value": fhir.fhir_decimal(m.value)}
        if m.comparator:
            q["comparator"] = m.comparator
        q.update({"unit": inp.unit, "system": fhir.UCUM, "code": inp.unit})
        obs["valueQuantity"] = q
    elif inp.value_concept is not None:
        obs["valueCodeableConcept"] = fhir.concept(inp.value_concept.coding(), text=inp.value_concept.display)
    elif inp.value_string is not None:
        obs["valueString"] = inp.value_string
    elif inp.value_boolean is not None:
        obs["valueBoolean"] = inp.value_boolean
    else:
        obs["valueInteger"] = inp.value_integer
    return [obs]


__all__ = ["ObservationInput", "to_observation"]
