"""Extract the analysis cohort from stored FHIR resources (pure functions, no I/O).

One :class:`PatientCourse` per Patient who received blinatumomab, built only from FHIR elements
(profiles in ``profiles/``; modelling choices in profiles/README.md):

- start of blinatumomab: earliest ``MedicationAdministration.effectivePeriod.start``;
- disease status at start: ``pedall-disease-status`` with category ``pre-treatment``;
- MRD before (no ``partOf``) and after each cycle (``partOf`` → the cycle's infusion), in percent of
  nucleated cells, with comparator and interpretation (site threshold, seed 000/002);
- response: the latest ``pedall-response`` Observation by ``effectiveDateTime`` (then id), recorded
  by the site or derived by the store from the MRD results (adapter/outcomes/derive.py);
- vials: ``pedall-blinatumomab-dispense`` MedicationDispense ``quantity`` and the vials a standard
  28-day course would need (``standard-course-quantity``; seed 002);
- HSCT: ``pedall-hsct`` Procedure: the first graft by date (then id) gives the HSCT date and donor
  figures, ``hsct_count`` counts every graft; adverse events with grade (``ae-grade``);
- therapies before and after blinatumomab: ``pedall-therapy`` Procedures (therapy and intent codes);
- relapse/progression: ``pedall-disease-status`` (follow-up) with value relapse/progression, or an
  AdverseEvent ``relapse``; death: ``Patient.deceased[x]`` (``deceasedBoolean: true`` is a death
  whose date is not known) or the death AdverseEvent, its date from ``Patient.deceasedDateTime`` or
  the AdverseEvent, its cause from the AdverseEvent; last follow-up:
  ``pedall-vital-status.effectiveDateTime``.

Patients are identified by their resource id only (pseudonymous); no name or record number is read.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import orjson

SD = "https://w3id.org/pedall-fhir/StructureDefinition/"
CS = "https://w3id.org/pedall-fhir/CodeSystem/"


@dataclass(frozen=True)
class MRD:
    """One MRD result: ``value`` in % of nucleated cells, ``comparator`` (``<`` …) or None,
    ``interpretation`` POS/NEG/IND, and the cycle it follows (None = before blinatumomab).
    ``value`` is None for a positive result below the quantitative range (``dataAbsentReason``,
    seed 004 "positive not quantifiable")."""

    value: float | None
    comparator: str | None
    interpretation: str
    cycle: int | None
    date: date | None
    source: str | None = None  # the Observation's id (a derived response's derivedFrom)


@dataclass
class PatientCourse:
    """Everything the outcome figures need about one patient (dates as ``datetime.date``)."""

    site: str
    patient: str
    gender: str | None = None
    birth_date: date | None = None
    diagnosis: date | None = None
    start: date | None = None
    cycles: int = 0
    infusion_days: int = 0
    outpatient_days: int = 0
    course_days: list[int] = field(default_factory=list)  # length of each cycle, days
    stopped: bool = False
    vials_used: int | None = None  # MedicationDispense.quantity, all cycles
    vials_standard_course: int | None = None  # standard-course-quantity extension, all cycles
    status_at_start: str | None = None
    relapsed_before_start: bool = False  # a relapse recorded before blinatumomab (indication: relapse)
    mrd: list[MRD] = field(default_factory=list)
    response: str | None = None
    hsct: date | None = None  # the first transplant (by date); ``donor`` describes that graft
    hsct_count: int = 0  # every transplant recorded (a second graft after graft failure or relapse)
    neutrophil_engraftment_day: int | None = None  # days after day 0 of the first graft
    platelet_engraftment_day: int | None = None
    graft_failure: bool = False  # of the first graft
    last_infusion_end: date | None = None  # the end of the last blinatumomab infusion (bridging to HSCT)
    therapies: list[tuple[str, str]] = field(default_factory=list)  # (therapy code, intent or "unstated")
    donor: dict[str, str] = field(default_factory=dict)
    adverse_events: list[tuple[str, int | None]] = field(default_factory=list)  # (term, grade)
    picu_admissions: int = 0
    relapse: date | None = None  # first relapse or progression after the start
    deceased: bool = False  # dead, whether or not the date is known
    death: date | None = None  # the date of death, when known
    death_cause: str | None = None
    death_related_to_blinatumomab: bool = False
    last_follow_up: date | None = None

    @property
    def mrd_pre(self) -> MRD | None:
        """The last MRD result before blinatumomab (``mrd`` is in date order)."""
        pre = [m for m in self.mrd if m.cycle is None]
        return pre[-1] if pre else None

    def mrd_after(self, cycle: int | None = None) -> MRD | None:
        """The MRD after ``cycle`` (default: after the last cycle with a result)."""
        post = sorted((m for m in self.mrd if m.cycle is not None), key=lambda m: m.cycle or 0)
        if cycle is None:
            return post[-1] if post else None
        return next((m for m in post if m.cycle == cycle), None)

    def age_years(self) -> float | None:
        """Completed years at the start of blinatumomab (infants: a fraction, months / 12)."""
        if self.birth_date is None or self.start is None:
            return None
        b, s = self.birth_date, self.start
        years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
        if years >= 1:
            return float(years)
        months = (s.year - b.year) * 12 + s.month - b.month - (s.day < b.day)
        return months / 12

    @property
    def end_of_follow_up(self) -> date | None:
        """The date of death, else the last follow-up; ``None`` for a death of unknown date (the
        last contact before it is not the end of follow-up)."""
        if self.deceased and self.death is None:
            return None
        return self.death or self.last_follow_up

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (dates as ISO 8601 text); :meth:`from_json` reverses it exactly."""
        return orjson.loads(self.to_json_bytes())

    def to_json_bytes(self) -> bytes:
        """:meth:`to_json` as UTF-8 JSON, serialised by orjson straight from the dataclass (dates as
        ISO 8601 ``YYYY-MM-DD``, tuples as arrays); the store writes this."""
        return orjson.dumps(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PatientCourse:
        """The course :meth:`to_json` wrote. Raises ``KeyError``/``TypeError`` for another shape."""
        kw = dict(data)
        for k in _DATE_FIELDS:
            kw[k] = date.fromisoformat(kw[k]) if kw[k] else None
        kw["mrd"] = [MRD(**{**m, "date": date.fromisoformat(m["date"]) if m["date"] else None}) for m in kw["mrd"]]
        kw["adverse_events"] = [(t, g) for t, g in kw["adverse_events"]]
        kw["therapies"] = [(t, i) for t, i in kw.get("therapies", [])]
        return cls(**kw)


_DATE_FIELDS = tuple(f.name for f in fields(PatientCourse) if "date" in str(f.type) and f.name != "mrd")


#: Changes whenever this module's code changes: stored courses made by other code are rebuilt
#: (see ``Store.cohort``).
COURSE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _d(text: str | None) -> date | None:
    if not text:
        return None
    t = text[:10]
    if len(t) == 4:
        return date(int(t), 7, 1)  # year precision: the middle of the year
    if len(t) == 7:
        return date(int(t[:4]), int(t[5:7]), 15)
    return date.fromisoformat(t)


def _ext(r: dict[str, Any], name: str) -> Any:
    for e in r.get("extension", []):
        if e.get("url") == SD + name:
            return next((v for k, v in e.items() if k.startswith("value")), None)
    return None


def _code(cc: Any, system_suffix: str) -> str | None:
    if not isinstance(cc, dict):
        return None
    return next((c.get("code") for c in cc.get("coding", []) if str(c.get("system", "")).endswith(system_suffix)), None)


def _other_term(cc: Any) -> str | None:
    """The term of an adverse event that is not a project code: ``meddra:<code>`` for a MedDRA
    coding (https://www.meddra.org), else the CodeableConcept's text, else the first coding's display
    or code (a site-local term counts by its text; lower-cased, trimmed)."""
    if not isinstance(cc, dict):
        return None
    codings = [c for c in cc.get("coding", []) if isinstance(c, dict)]
    meddra = next((c.get("code") for c in codings if c.get("system") == "https://www.meddra.org" and c.get("code")), None)
    if meddra:
        return f"meddra:{meddra}"
    text = cc.get("text") or next((c.get("display") or c.get("code") for c in codings if c.get("display") or c.get("code")), None)
    return " ".join(str(text).split()).lower() if text else None


def _profile(r: dict[str, Any]) -> str:
    return next((p[len(SD):] for p in r.get("meta", {}).get("profile", []) if p.startswith(SD)), "")


def _subject(r: dict[str, Any]) -> str | None:
    ref = (r.get("subject") or r.get("patient") or {}).get("reference", "")
    return ref.split("/", 1)[1] if ref.startswith("Patient/") else None


def build_cohort(resources: Iterable[dict[str, Any]]) -> list[PatientCourse]:
    """Patient courses of everyone with at least one blinatumomab infusion, in (site, id) order.
    ``resources`` is any iterable of FHIR R4 resources (e.g. a site's stored resources)."""
    by_patient: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    patients: dict[str, dict[str, Any]] = {}
    for r in resources:
        if r.get("resourceType") == "Patient":
            patients[r["id"]] = r
        elif (pid := _subject(r)) is not None:
            by_patient[pid][r["resourceType"]].append(r)
    out = []
    for pid, pat in patients.items():
        course = course_of(pat, by_patient.get(pid, {}))
        if course.start is not None:
            out.append(course)
    return sorted(out, key=lambda c: (c.site, c.patient))


def course_of(pat: dict[str, Any], res: dict[str, list[dict[str, Any]]],  # noqa: C901
              site: str | None = None) -> PatientCourse:
    """One patient's course from the Patient and the resources about it, grouped by resource type
    (``{"Observation": [...], ...}``). ``site`` defaults to the id of ``managingOrganization`` (a
    site's Organization id is its code). ``start`` is ``None`` when no infusion is recorded."""
    if site is None:
        org = (pat.get("managingOrganization") or {}).get("reference", "")
        site = org.split("/", 1)[1] if org.startswith("Organization/") else ""
    c = PatientCourse(site=site, patient=pat["id"], gender=pat.get("gender"),
                      birth_date=_d(pat.get("birthDate")), death=_d(pat.get("deceasedDateTime")),
                      deceased=pat.get("deceasedBoolean") is True or "deceasedDateTime" in pat)
    cycle_of: dict[str, int] = {}
    days: set[date] = set()
    outpatient: set[date] = set()
    for ma in res.get("MedicationAdministration", []):
        cycle = _ext(ma, "treatment-cycle")
        cycle_of[ma["id"]] = cycle
        p = ma.get("effectivePeriod") or {}
        s, e = _d(p.get("start")), _d(p.get("end")) or _d(p.get("start"))
        if s is None or e is None:
            continue
        c.start = s if c.start is None or s < c.start else c.start
        c.last_infusion_end = e if c.last_infusion_end is None or e > c.last_infusion_end else c.last_infusion_end
        c.cycles = max(c.cycles, cycle or 0)
        c.stopped = c.stopped or ma.get("status") == "stopped"
        span = {s + timedelta(days=i) for i in range((e - s).days + 1)}
        days |= span
        setting = ((ma.get("category") or {}).get("coding") or [{}])[0].get("code")
        if setting == "outpatient":
            outpatient |= span
    # course length per cycle: the union of its dose steps
    per_cycle: dict[int, set[date]] = defaultdict(set)
    for ma in res.get("MedicationAdministration", []):
        p = ma.get("effectivePeriod") or {}
        s, e = _d(p.get("start")), _d(p.get("end")) or _d(p.get("start"))
        if s and e:
            per_cycle[cycle_of[ma["id"]] or 0] |= {s + timedelta(days=i) for i in range((e - s).days + 1)}
    c.course_days = [len(v) for _, v in sorted(per_cycle.items())]
    c.infusion_days, c.outpatient_days = len(days), len(outpatient)
    for md in res.get("MedicationDispense", []):
        if _profile(md) != "pedall-blinatumomab-dispense" or md.get("status") != "completed":
            continue
        c.vials_used = (c.vials_used or 0) + int((md.get("quantity") or {}).get("value", 0))
        std = _ext(md, "standard-course-quantity")
        if isinstance(std, dict) and "value" in std:
            c.vials_standard_course = (c.vials_standard_course or 0) + int(std["value"])
    responses: list[tuple[date, str, str | None]] = []
    for o in res.get("Observation", []):
        prof = _profile(o)
        when = _d(o.get("effectiveDateTime"))
        if o.get("status") in ("entered-in-error", "cancelled"):
            continue
        if prof == "pedall-mrd" and ("valueQuantity" in o or "dataAbsentReason" in o):
            q = o.get("valueQuantity") or {}
            part = (o.get("partOf") or [{}])[0].get("reference", "")
            cycle = cycle_of.get(part.split("/", 1)[1]) if part else None
            if part and cycle is None:
                cycle = _ext(o, "treatment-cycle")
            interp = _code((o.get("interpretation") or [{}])[0], "v3-ObservationInterpretation") or "IND"
            value = float(q["value"]) if "value" in q else None
            c.mrd.append(MRD(value, q.get("comparator"), interp, cycle, when, o.get("id")))
        elif prof == "pedall-disease-status":
            status = _code(o.get("valueCodeableConcept"), "disease-status")
            point = _code((o.get("category") or [{}])[0], "assessment-timepoint")
            relapse = status in ("relapse", "relapse-1", "relapse-2", "relapse-3")
            if point == "pre-treatment":
                c.status_at_start = status
            elif relapse and (point == "diagnosis" or (when is not None and c.start is not None and when < c.start)):
                c.relapsed_before_start = True
            elif status in ("relapse", "relapse-1", "relapse-2", "relapse-3", "progression") and when is not None:
                if c.start is None or when >= c.start:
                    c.relapse = when if c.relapse is None or when < c.relapse else c.relapse
        elif prof == "pedall-response":
            responses.append((when or date.min, str(o.get("id")), _code(o.get("valueCodeableConcept"), "blinatumomab-response")))
        elif prof == "pedall-vital-status" and when is not None:
            c.last_follow_up = when if c.last_follow_up is None or when > c.last_follow_up else c.last_follow_up
    if responses:  # the latest by effectiveDateTime (then id): never the order rows were stored in
        c.response = max(responses)[2]
    grafts = sorted((p for p in res.get("Procedure", []) if _profile(p) == "pedall-hsct" and p.get("status") == "completed"),
                    key=lambda p: (_d(p.get("performedDateTime")) or date.max, p["id"]))
    c.hsct_count = len(grafts)
    for p in grafts[:1]:  # the first graft by date (then id): never the order rows were stored in
        c.hsct = _d(p.get("performedDateTime"))
        relation = _ext(p, "hsct-donor-relationship") or {}
        role = next((x.get("code") for x in relation.get("coding", []) if x.get("system", "").endswith("v3-RoleCode")), None)
        hla = _ext(p, "hsct-hla-match") or {}
        conditioning = _ext(p, "hsct-conditioning") or {}
        c.donor = {k: v for k, v in {
            "hla_match": _code(hla, "hla-match"),
            "hla_as_written": hla.get("text") if isinstance(hla, dict) else None,
            "donor_type": _code(_ext(p, "hsct-donor-type"), "hsct-donor-type"),
            "relatedness": _code(relation, "donor-relatedness") or ("related" if role else None),
            "stem_cell_source": "+".join(sorted(filter(None, (_code(u, "stem-cell-source") for u in p.get("usedCode") or [])))),
            "conditioning": conditioning.get("text") or next((x.get("display") or x.get("code")
                                                              for x in conditioning.get("coding", [])), None),
        }.items() if v}
        first = f"Procedure/{p['id']}"
        for o in res.get("Observation", []):
            if not any(ref.get("reference") == first for ref in o.get("partOf") or []):
                continue
            event = _code(o.get("code"), "hsct-outcome")
            if event == "graft-failure":
                c.graft_failure = True
            elif event in ("neutrophil-engraftment", "platelet-engraftment"):
                q = o.get("valueQuantity") or {}
                when = _d(o.get("effectiveDateTime"))
                days = q.get("value") if q.get("code") == "d" else ((when - c.hsct).days if when and c.hsct else None)
                if days is not None:
                    setattr(c, event.replace("-", "_") + "_day", int(days))
    for p in res.get("Procedure", []):
        if _profile(p) == "pedall-therapy":
            code = _code(p.get("code"), "therapy")
            if code:
                c.therapies.append((code, _code(p.get("category"), "therapy-intent") or "unstated"))
    c.therapies.sort()
    for ae in res.get("AdverseEvent", []):
        term = _code(ae.get("event"), "adverse-event-term") or _other_term(ae.get("event"))
        if term == "death":
            c.deceased = True
            c.death = c.death or _d(ae.get("date"))
            c.death_cause = _code(_ext(ae, "cause-of-death"), "adverse-event-term")
            c.death_related_to_blinatumomab = bool(ae.get("suspectEntity"))
        elif term == "relapse":
            when = _d(ae.get("date"))
            if when and (c.relapse is None or when < c.relapse):
                c.relapse = when
        elif term:
            c.adverse_events.append((term, _ext(ae, "ae-grade")))
    c.picu_admissions = sum(1 for e in res.get("Encounter", []) if _code((e.get("type") or [{}])[0], "encounter-type") == "picu-admission")
    for cond in res.get("Condition", []):
        if _profile(cond) == "pedall-diagnosis":
            c.diagnosis = _d(cond.get("onsetDateTime"))
    # the same course whatever order the resources came in
    c.mrd.sort(key=lambda m: (m.date or date.min, -1 if m.cycle is None else m.cycle,
                         -1.0 if m.value is None else m.value, m.comparator or ""))
    c.adverse_events.sort(key=lambda e: (e[0], -1 if e[1] is None else e[1]))
    return c


def derive_response(c: PatientCourse) -> str | None:
    """The response a site that records none implies through its MRD results (HITO): MRD-negative
    after the last cycle (site threshold) is CR with MRD negativity (seed 002 definition, hematologic
    recovery not recorded) or MRD clearance when the pre-treatment burden was below 1 %; a ≥ 1-log
    reduction that stays detectable is PR; otherwise PD. None when there is no post-cycle MRD. The
    store keeps the result as a response Observation (adapter/outcomes/derive.py), so the figures
    read it from FHIR like a recorded one."""
    last, pre = c.mrd_after(), c.mrd_pre
    if last is None:
        return None
    if last.interpretation == "NEG":
        return "mrd-clearance" if pre is not None and (pre.value is None or pre.value < 1) and pre.interpretation == "POS" else "cr-mrd-negative"
    if pre is not None and pre.value is not None and _below_tenth(last, pre.value):
        return "pr"
    return "pd"


def _below_tenth(m: MRD, pre: float) -> bool:
    """At least a 1-log reduction from ``pre`` (%). A positive result that is not quantifiable is
    below the quantitative range, taken as the 10^-4 (0.01 %) limit of RQ-PCR (EuroMRD; seed 004)."""
    value = 0.01 if m.value is None else m.value
    return value <= pre / 10
