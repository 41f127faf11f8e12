"""Therapy lines as written: any treatment before or after blinatumomab (chemotherapy regimens,
CAR-T, a further blinatumomab course, radiotherapy, a targeted drug), and the decision to stop
(treatment abandoned, palliative care), as a Procedure (profile ``pedall-therapy``).

``code`` is the therapy from a code table on the project CodeSystem ``therapy`` (the regimen as the
site wrote it stays as the CodeableConcept's text); ``category`` is its intent from the project
CodeSystem ``therapy-intent``: ``prior`` (a line before blinatumomab), ``bridging`` (between
blinatumomab and HSCT), ``consolidation``, ``salvage`` (for relapse or refractoriness after
blinatumomab), ``maintenance``. The line number, when the site gives one, is the ``treatment-line``
extension. A therapy a site abandons is ``status: not-done``; "treatment abandoned" and "palliative
care" are therapy codes of their own, so a figure can count them.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from adapter.mapping import fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded


class TherapyInput(ConceptInput):
    """``therapy`` and ``intent`` from code tables; ``text`` the regimen as written (e.g.
    ``FLAG-Ida``); ``line`` the line number; ``start``/``end`` dates (either may be unknown);
    ``abandoned``: started or planned and not completed (status ``not-done``); ``occurrence`` tells
    two therapies of one code and intent apart when they have no start date."""

    therapy: Coded
    intent: Coded | None = None
    text: str | None = None
    line: int | None = None
    start: date | None = None
    end: date | None = None
    abandoned: bool = False
    occurrence: int = 1


@concept("therapy", TherapyInput, ("Procedure",))
def to_therapy(inp: TherapyInput, site: SiteContext) -> list[dict[str, Any]]:
    """One Procedure per therapy line. Raises ``ValueError`` when it ends before it starts or a
    line number is below 1."""
    if inp.start is not None and inp.end is not None and inp.end < inp.start:
        raise ValueError("the therapy ends before it starts")
    if inp.line is not None and inp.line < 1:
        raise ValueError("a line number starts at 1")
    key = inp.start.isoformat() if inp.start is not None else f"line{inp.line or ''}"
    proc = fhir.profiled("Procedure", site.id("therapy", inp.patient, inp.therapy.code or "",
                                              inp.intent.code if inp.intent else "", key, inp.occurrence), "pedall-therapy")
    if inp.line is not None:
        proc["extension"] = [{"url": fhir.SD + "treatment-line", "valueInteger": inp.line}]
    proc["status"] = "not-done" if inp.abandoned else ("completed" if inp.end is not None or inp.start is not None else "unknown")
    if inp.intent is not None:
        proc["category"] = fhir.concept(inp.intent.coding())
    proc["code"] = fhir.concept(inp.therapy.coding(), text=inp.text or inp.therapy.display)
    proc["subject"] = fhir.ref("Patient", site.patient_id(inp.patient))
    if inp.start is not None and inp.end is not None:
        proc["performedPeriod"] = {"start": fhir.fhir_date(inp.start), "end": fhir.fhir_date(inp.end)}
    elif inp.start is not None:
        proc["performedDateTime"] = fhir.fhir_date(inp.start)
    return [proc]
