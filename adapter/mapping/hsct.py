"""Procedure, HSCT: hematopoietic stem-cell transplant (profile ``pedall-hsct``), and what happens to
a graft afterwards (engraftment, graft failure).

Code SNOMED CT 234336002 (REFERENCE.md §2; the allogeneic and haploidentical codes are unconfirmed,
so donor relationship and HLA match are expressed instead). Several grafts per patient are several
Procedures, each keyed by its sequence ``number`` (1 = first); figures use the first by date and
count the others (adapter/outcomes). Per graft:

- donor relationship: v3-RoleCode (MTH, FTH, SIB...) for a named relative, or the project
  CodeSystem donor-relatedness (related, unrelated) when the site says only that;
- HLA match: the project hla-match category, with the match as the site wrote it (``5/10``, ``8/8``)
  as the CodeableConcept's text (transform ``hla``);
- stem-cell sources: one ``usedCode`` per source, so a combined bone marrow + peripheral blood graft
  has two (transform ``lookup_each``);
- conditioning regimen: the ``hsct-conditioning`` extension, the regimen as written (text), coded
  when a code table gives a code;
- engraftment (neutrophil, platelet) and graft failure: ``graft_event`` Observations whose
  ``partOf`` is the graft's Procedure (R4 Observation.partOf may reference a Procedure), with the
  day count after day 0 (UCUM ``d``) and the date when known.
"""

from __future__ import annotations

from datetime import date, timedelta
from datetime import date as _Date
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded
from adapter.mapping.transforms import HLAMatch

HLA_MATCH = fhir.CS + "hla-match"
HSCT_OUTCOME = fhir.CS + "hsct-outcome"
_HLA_DISPLAY = {"identical": "HLA-identical", "haploidentical": "Haploidentical", "mismatched": "HLA-mismatched"}


class HSCTInput(ConceptInput):
    """``performedDateTime`` of the infusion of cells (day 0); ``donor_relationship`` (v3-RoleCode or
    donor-relatedness), ``hla_match`` (a code table entry, or :class:`HLAMatch` from ``hla``),
    ``stem_cell_source`` (one, or several from ``lookup_each``) and ``donor_type`` from code tables;
    ``conditioning`` (the regimen: text, or a code table entry); ``number`` is the graft's sequence
    number (1 = first)."""

    performedDateTime: date
    donor_relationship: Coded | None = None
    hla_match: Coded | HLAMatch | None = None
    stem_cell_source: Coded | list[Coded] | None = None
    donor_type: Coded | None = None
    conditioning: Coded | str | None = None
    number: int = 1


def hsct_id(site: SiteContext, patient: str, number: int) -> str:
    """The id of a patient's graft number ``number``."""
    return site.id("hsct", patient, number)


@concept("hsct", HSCTInput, ("Procedure",))
def to_hsct_procedure(inp: HSCTInput, site: SiteContext) -> list[dict[str, Any]]:
    """One HSCT Procedure, id keyed by patient and graft number. Raises ``ValueError`` for a graft
    number below 1."""
    if inp.number < 1:
        raise ValueError("a graft's number starts at 1")
    proc = fhir.profiled("Procedure", hsct_id(site, inp.patient, inp.number), "pedall-hsct")
    ext = []
    if inp.donor_relationship is not None:
        ext.append({"url": fhir.SD + "hsct-donor-relationship",
                    "valueCodeableConcept": fhir.concept(inp.donor_relationship.coding())})
    if isinstance(inp.hla_match, HLAMatch):
        ext.append({"url": fhir.SD + "hsct-hla-match", "valueCodeableConcept": fhir.concept(
            fhir.coding(HLA_MATCH, inp.hla_match.category, _HLA_DISPLAY[inp.hla_match.category]), text=inp.hla_match.text)})
    elif inp.hla_match is not None:
        ext.append({"url": fhir.SD + "hsct-hla-match", "valueCodeableConcept": fhir.concept(inp.hla_match.coding())})
    if inp.donor_type is not None:
        ext.append({"url": fhir.SD + "hsct-donor-type", "valueCodeableConcept": fhir.concept(inp.donor_type.coding())})
    if isinstance(inp.conditioning, str):
        ext.append({"url": fhir.SD + "hsct-conditioning", "valueCodeableConcept": {"text": inp.conditioning}})
    elif inp.conditioning is not None:
        ext.append({"url": fhir.SD + "hsct-conditioning",
                    "valueCodeableConcept": fhir.concept(inp.conditioning.coding(), text=inp.conditioning.display)})
    if ext:
        proc["extension"] = ext
    proc["status"] = "completed"
    proc["code"] = fhir.concept(codes.HSCT)
    proc["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    proc["performedDateTime"] = fhir.fhir_date(inp.performedDateTime)
    sources = inp.stem_cell_source if isinstance(inp.stem_cell_source, list) else \
        [inp.stem_cell_source] if inp.stem_cell_source is not None else []
    if sources:
        proc["usedCode"] = [fhir.concept(s.coding()) for s in sources]
    return [proc]


class GraftEventInput(ConceptInput):
    """What happened to graft ``number``: ``event`` from a code table on the hsct-outcome CodeSystem
    (neutrophil-engraftment, platelet-engraftment, graft-failure); when: ``day`` (days after day 0)
    with ``graft_date`` (day 0) to date it, or ``date``. Graft failure needs neither."""

    event: Coded
    number: int = 1
    day: int | None = None
    graft_date: _Date | None = None
    date: _Date | None = None  # (the field's name hides the type inside the class body)


@concept("graft_event", GraftEventInput, ("Observation",))
def to_graft_event(inp: GraftEventInput, site: SiteContext) -> list[dict[str, Any]]:
    """One Observation (profile pedall-observation) ``partOf`` the graft's Procedure: engraftment
    with its day count after day 0 (``valueQuantity`` in UCUM ``d``) and date, or graft failure
    (``valueBoolean: true``). Raises ``ValueError`` for an engraftment without a day or a date, or a
    negative day."""
    failure = inp.event.code == "graft-failure"
    when = inp.date if inp.date is not None else (
        inp.graft_date + timedelta(days=inp.day) if inp.graft_date is not None and inp.day is not None else None)
    day = inp.day if inp.day is not None else (
        (inp.date - inp.graft_date).days if inp.date is not None and inp.graft_date is not None else None)
    if day is not None and day < 0:
        raise ValueError("an event of a graft cannot come before its day 0")
    if not failure and day is None and when is None:
        raise ValueError("an engraftment needs its day after day 0 or its date")
    obs = fhir.profiled("Observation", site.id("graft-event", inp.patient, inp.number, inp.event.code or ""),
                        "pedall-observation")
    obs["partOf"] = [fhir.ref("Procedure", hsct_id(site, inp.patient, inp.number))]
    obs["status"] = "final"
    obs["code"] = fhir.concept(inp.event.coding())
    obs["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if when is not None:
        obs["effectiveDateTime"] = fhir.fhir_date(when)
    if failure:
        obs["valueBoolean"] = True
    elif day is not None:
        obs["valueQuantity"] = {"value": day, "unit": "d", "system": fhir.UCUM, "code": "d"}
    else:
        obs["valueDateTime"] = fhir.fhir_date(when)  # type: ignore[arg-type]
    return [obs]
