"""Procedure, HSCT: hematopoietic stem-cell transplant (profile ``pedall-hsct``).

Code SNOMED CT 234336002 (REFERENCE.md §2; the allogeneic and haploidentical codes are unconfirmed,
so donor relationship and HLA match are expressed instead). Donor relationship uses v3-RoleCode
(MTH, FTH, SIB, ...). HLA match and stem-cell source use project CodeSystems; their standard codes,
where confirmed, are data in the code tables (``extra``).
"""

from __future__ import annotations

from datetime import date
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded


class HSCTInput(ConceptInput):
    """``performedDateTime`` of the infusion of cells (day 0); ``donor_relationship`` (v3-RoleCode),
    ``hla_match`` and ``stem_cell_source`` from code tables; ``number`` counts transplants (1 = first)."""

    performedDateTime: date
    donor_relationship: Coded | None = None
    hla_match: Coded | None = None
    stem_cell_source: Coded | None = None
    donor_type: Coded | None = None
    number: int = 1


@concept("hsct", HSCTInput, ("Procedure",))
def to_hsct_procedure(inp: HSCTInput, site: SiteContext) -> list[dict[str, Any]]:
    """One HSCT Procedure, id keyed by patient and transplant number."""
    proc = fhir.profiled("Procedure", site.id("hsct", inp.patient, inp.number), "pedall-hsct")
    ext = []
    if inp.donor_relationship is not None:
        ext.append({"url": fhir.SD + "hsct-donor-relationship",
                    "valueCodeableConcept": fhir.concept(inp.donor_relationship.coding())})
    if inp.hla_match is not None:
        ext.append({"url": fhir.SD + "hsct-hla-match", "valueCodeableConcept": fhir.concept(inp.hla_match.coding())})
    if inp.donor_type is not None:
        ext.append({"url": fhir.SD + "hsct-donor-type", "valueCodeableConcept": fhir.concept(inp.donor_type.coding())})
    if ext:
        proc["extension"] = ext
    proc["status"] = "completed"
    proc["code"] = fhir.concept(codes.HSCT)
    proc["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    proc["performedDateTime"] = fhir.fhir_date(inp.performedDateTime)
    if inp.stem_cell_source is not None:
        proc["usedCode"] = [fhir.concept(inp.stem_cell_source.coding())]
    return [proc]
