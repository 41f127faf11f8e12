"""MedicationDispense: blinatumomab vials used for a course (profile ``pedall-blinatumomab-dispense``).

One resource per cycle. ``quantity`` is the number of vials actually used for the patient, in the
UCUM annotation unit ``{vial}`` (a count; FHIR R4 §4.3.0 Quantity allows UCUM annotations).
Seed 002 (HUANL, vial sharing) also records how many vials a standard 28-day course would have
needed; that comparison figure is carried in the ``standard-course-quantity`` extension, so the
saving (75 vials against 132, 43 %) is computed from stored FHIR. Prices are not patient data and
live in the site's ``site.yaml`` (``drug_cost``), not here.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept


class DispenseInput(ConceptInput):
    """``quantity``: vials used for ``cycle`` (a count ≥ 0); ``standard_course_quantity``: vials a
    standard 28-day course would need for the same patient (seed 002 TABLE 2); ``whenHandedOver``:
    the day the course started (the first vial)."""

    cycle: int
    quantity: int
    standard_course_quantity: int | None = None
    whenHandedOver: date | None = None


def vials(n: int) -> dict[str, Any]:
    """A count of vials as an R4 SimpleQuantity (UCUM annotation ``{vial}``)."""
    return {"value": n, "unit": "vial", "system": fhir.UCUM, "code": "{vial}"}


@concept("dispense", DispenseInput, ("MedicationDispense",))
def to_medication_dispense(inp: DispenseInput, site: SiteContext) -> list[dict[str, Any]]:
    """One MedicationDispense of blinatumomab for a cycle, id keyed by patient and cycle. Raises
    ``ValueError`` for a negative vial count."""
    if inp.quantity < 0 or (inp.standard_course_quantity is not None and inp.standard_course_quantity < 0):
        raise ValueError("a vial count cannot be negative")
    md = fhir.profiled("MedicationDispense", site.id("dispense", inp.patient, inp.cycle), "pedall-blinatumomab-dispense")
    ext: list[dict[str, Any]] = [{"url": fhir.SD + "treatment-cycle", "valueInteger": inp.cycle}]
    if inp.standard_course_quantity is not None:
        ext.append({"url": fhir.SD + "standard-course-quantity", "valueQuantity": vials(inp.standard_course_quantity)})
    md["extension"] = ext
    md["status"] = "completed"
    md["medicationCodeableConcept"] = fhir.concept(codes.BLINATUMOMAB)
    md["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    md["quantity"] = vials(inp.quantity)
    if inp.whenHandedOver is not None:
        md["whenHandedOver"] = fhir.fhir_date(inp.whenHandedOver)
    return [md]
