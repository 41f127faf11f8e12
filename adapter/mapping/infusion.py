"""MedicationAdministration: blinatumomab infusions (profile ``pedall-blinatumomab-infusion``).

One resource per dose step of a cycle. Step 1 stands for the cycle (MRD ``partOf`` points to it);
later steps point to step 1 through ``partOf``. The cycle number is in the ``treatment-cycle``
extension. Dose rate in UCUM ``ug/m2/d`` (REFERENCE.md §3; ``ug/m2/24.h`` would parse wrongly).
Schedule: 5 µg/m²/day on days 1-7 of cycle 1, then 15 µg/m²/day (seed 000 Methods); seed 002
escalates after 4-7 days, so a course whose escalation day is not recorded stays one resource
whose ``note`` says so. ``dosage`` (route and rate) is written only when the rate is known: R4's
invariant mad-1 requires a dose or a rate in every dosage.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from adapter.mapping import codes, fhir
from adapter.mapping.base import ConceptInput, SiteContext, concept
from adapter.mapping.transforms import Concept as Coded


class InfusionInput(ConceptInput):
    """``dose_rate``/``escalated_dose_rate`` in µg/m²/day; ``escalation_day`` is the first day (1-based)
    at the escalated rate. ``setting`` codes: medication-admin-category inpatient | outpatient.
    ``stopped``: the course was cut short (status ``stopped`` instead of ``completed``)."""

    cycle: int
    start: date
    end: date | None = None
    dose_rate: Decimal | None = None
    escalated_dose_rate: Decimal | None = None
    escalation_day: int | None = None
    setting: Coded | None = None
    stopped: bool = False


def _rate(v: Decimal) -> dict[str, Any]:
    return {"value": fhir.fhir_decimal(v), "unit": "ug/m2/d", "system": fhir.UCUM, "code": "ug/m2/d"}


def _fmt(v: Decimal) -> str:
    return f"{fhir.fhir_decimal(v)} µg/m²/day"


@concept("infusion", InfusionInput, ("MedicationAdministration",))
def to_medication_administrations(inp: InfusionInput, site: SiteContext) -> list[dict[str, Any]]:
    """Blinatumomab MedicationAdministration(s) for one cycle. Raises ``ValueError`` when the end is
    before the start or the escalation day falls outside the course."""
    if inp.end is not None and inp.end < inp.start:
        raise ValueError("the infusion ends before it starts")
    steps: list[tuple[date, date | None, Decimal | None, str | None]] = []
    esc = inp.escalated_dose_rate
    if inp.dose_rate is not None and esc is not None and esc != inp.dose_rate:
        if inp.escalation_day is None:
            steps.append((inp.start, inp.end, None,
                          f"{_fmt(inp.dose_rate)}, then {_fmt(esc)} (escalation day not recorded)"))
        else:
            switch = inp.start + timedelta(days=inp.escalation_day - 1)
            if inp.escalation_day < 2 or (inp.end is not None and switch > inp.end):
                raise ValueError(f"escalation day {inp.escalation_day} falls outside the course")
            steps.append((inp.start, switch - timedelta(days=1), inp.dose_rate, None))
            steps.append((switch, inp.end, esc, None))
    else:
        steps.append((inp.start, inp.end, inp.dose_rate, None))

    out = []
    patient_ref = fhir.ref("Patient", site.patient_id(inp.patient))
    for n, (start, end, rate, text) in enumerate(steps, start=1):
        ma = fhir.profiled("MedicationAdministration", site.infusion_id(inp.patient, inp.cycle, n),
                           "pedall-blinatumomab-infusion")
        ma["extension"] = [{"url": fhir.SD + "treatment-cycle", "valueInteger": inp.cycle}]
        if n > 1:
            ma["partOf"] = [fhir.ref("MedicationAdministration", site.infusion_id(inp.patient, inp.cycle, 1))]
        last = n == len(steps)
        if inp.stopped and last:
            ma["status"] = "stopped"
        else:
            ma["status"] = "completed" if end is not None else "in-progress"
        if inp.setting is not None:
            ma["category"] = fhir.concept(inp.setting.coding())
        ma["medicationCodeableConcept"] = fhir.concept(codes.BLINATUMOMAB)
        ma["subject"] = patient_ref
        period = {"start": fhir.fhir_date(start)}
        if end is not None:
            period["end"] = fhir.fhir_date(end)
        ma["effectivePeriod"] = period
        if text:
            ma["note"] = [{"text": text}]
        if rate is not None:  # R4 mad-1: a dosage SHALL have a dose or a rate, so none without a rate
            ma["dosage"] = {"route": fhir.concept(fhir.coding(fhir.SNOMED, "47625008", "Intravenous route")),
                            "rateQuantity": _rate(rate)}
        out.append(ma)
    return out
