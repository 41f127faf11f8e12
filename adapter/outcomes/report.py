"""Outcome figures per site and pooled, from :class:`~adapter.outcomes.cohort.PatientCourse` lists
(pure; the store and the API do the I/O).

Definitions (REFERENCE.md §8 and the seed papers):
- **OS**: start of blinatumomab → death from any cause, censored at the last follow-up (seed 002).
- **RFS** (also reported by seed 000 as DFS, and by the API as EFS when asked): start of blinatumomab
  → relapse, progression or death, censored at the last follow-up (seed 002; progression counts,
  examples/huanl/EXPECTED.md C12).
- **MRD negativity**: below 0.01 % (10⁻⁴); a value of exactly 0.01 % follows the site's declaration
  (profiles/README.md choice 2); ``after_last_strict`` / ``after_last_inclusive`` give both readings.
- **CR**: CR with MRD negativity or MRD clearance (seed 002 TABLE 4); **morphological CR** also
  counts CR with detectable MRD and CR without an MRD result; **MRD clearance**: MRD-negative after
  blinatumomab among patients who started MRD-positive with < 1 % blasts (seed 002).
- **Survival from HSCT** (seed 004): the same endpoints among transplanted patients, from the date
  of HSCT.
- **Age**: completed years at the start (``age_years``), and (start − birth date) / 365.25
  (``age_decimal_years``, the convention of examples/uk_infants and mx_multicentro EXPECTED.md).
- **Median follow-up**: reverse Kaplan–Meier from the start of blinatumomab, and the plain median
  from diagnosis to last contact or death (the reading of seed 002, EXPECTED.md C10).
"""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from adapter.outcomes.cohort import PatientCourse
from adapter.outcomes.stats import (
    DAYS_PER_MONTH,
    SurvivalData,
    heterogeneity,
    km_at,
    logrank,
    proportion,
    reverse_km_median,
)
from adapter.spec.models import DrugCost

DEFINITIONS = {
    "os": {"name": "Overall survival", "origin": "start of blinatumomab", "events": ["death from any cause"],
           "censoring": "last follow-up", "source": "seed 002; REFERENCE.md §8"},
    "rfs": {"name": "Relapse-free survival (EFS/DFS as used by seeds 000 and 002)", "origin": "start of blinatumomab",
            "events": ["relapse", "progression", "death from any cause"], "censoring": "last follow-up",
            "source": "seed 002; REFERENCE.md §8; examples/huanl/EXPECTED.md C12"},
    "mrd_negative": {"threshold_percent": 0.01, "source": "seeds 000 and 002",
                     "equal_to_threshold": "per site declaration (mappings/<site>/site.yaml)"},
    "follow_up": {"reverse_km": "reverse Kaplan-Meier from the start of blinatumomab (Schemper & Smith 1996)",
                  "from_diagnosis": "median of diagnosis to last contact or death (seed 002, EXPECTED.md C10)"},
    "time_unit": "months = days / 30.4375",
    "hsct": {"graft": "the first transplant by date (a later graft is counted in more_than_one_graft)",
             "source": "issue 18: figures never depend on the order rows were stored in"},
}

RESPONSES = ("cr-mrd-negative", "mrd-clearance", "cr-mrd-positive", "cr-mrd-unknown", "pr", "nr", "pd", "not-evaluable")
#: Response codes counted as CR: complete remission with MRD negativity (seed 002 TABLE 4: CR is MRD
#: < 0.01 %, and MRD clearance is reaching it from detectable MRD). Morphological CR also counts CR
#: with detectable MRD and CR whose MRD was not assessed.
CR_MRD_NEGATIVE = ("cr-mrd-negative", "mrd-clearance")
CR_MORPHOLOGICAL = (*CR_MRD_NEGATIVE, "cr-mrd-positive", "cr-mrd-unknown")
STRATA: dict[str, Callable[[PatientCourse], str]] = {
    "site": lambda c: c.site,
    "hsct": lambda c: "hsct" if c.hsct else "no-hsct",
    "status": lambda c: _status_group(c.status_at_start),
    "sex": lambda c: c.gender or "unknown",
    "donor": lambda c: c.donor.get("hla_match", "unknown") if c.hsct else "no-hsct",
    "response": lambda c: "cr" if c.response in CR_MRD_NEGATIVE else c.response or "not-assessed",
    "cgvhd": lambda c: "cgvhd" if any(t == "chronic-gvhd" for t, _ in c.adverse_events) else "no-cgvhd",
}


def _status_group(s: str | None) -> str:
    if s == "refractory":
        return "refractory"
    if s in ("cr1-mrd-positive", "cr2-mrd-positive"):
        return "cr-mrd-positive"
    if s in ("relapse-1", "relapse"):
        return "first-relapse" if s == "relapse-1" else "relapse"
    if s in ("relapse-2", "relapse-3"):
        return "later-relapse"
    return "unknown"


def _months(a: Any, b: Any) -> float:
    return (b - a).days / DAYS_PER_MONTH


#: Why a patient is left out of a survival analysis (``excluded`` in each survival figure).
NO_DEATH_DATE = "dead, date of death not known"
NO_FOLLOW_UP = "no last follow-up or date of death"
NO_ORIGIN = "no date of origin"


def survival_data(cohort: list[PatientCourse], endpoint: str, origin: str = "start") -> SurvivalData:
    """Durations (months) and events for ``os`` or ``rfs``, from ``origin``: ``start`` of
    blinatumomab, or ``hsct`` (transplanted patients only; events before the HSCT cannot happen in
    this cohort, seed 004). A patient whose time cannot be known is left out and counted by reason
    in ``excluded``: a death of unknown date (unless, for RFS, a relapse came first, which is then
    the event), no end of follow-up, no date of origin."""
    durations, events = [], []
    excluded: Counter[str] = Counter()
    for c in cohort:
        t0 = c.start if origin == "start" else c.hsct
        if t0 is None:
            excluded[NO_ORIGIN] += 1
            continue
        if endpoint == "rfs" and c.relapse is not None and (c.death is None or c.relapse <= c.death):
            event, when = True, c.relapse
        elif c.deceased and c.death is None:
            excluded[NO_DEATH_DATE] += 1
            continue
        elif c.death is not None:
            event, when = True, c.death
        elif c.last_follow_up is not None:
            event, when = False, c.last_follow_up
        else:
            excluded[NO_FOLLOW_UP] += 1
            continue
        durations.append(max(_months(t0, when), 0.0))
        events.append(int(event))
    return SurvivalData(durations, events, dict(excluded))


def _summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    out = {"n": len(values), "mean": round(statistics.fmean(values), 2), "median": round(statistics.median(values), 2),
           "min": round(min(values), 2), "max": round(max(values), 2)}
    if len(values) > 1:
        out["sd"] = round(statistics.stdev(values), 2)
    return out


def _after_relapse(c: PatientCourse) -> bool:
    return c.relapsed_before_start or c.status_at_start in ("relapse", "relapse-1", "relapse-2", "relapse-3", "cr2-mrd-positive")


def _mrd_figures(cohort: list[PatientCourse]) -> dict[str, Any]:
    pre = [c.mrd_pre for c in cohort]
    last = [c.mrd_after() for c in cohort]
    c1 = [c.mrd_after(1) for c in cohort]

    def strict(m: Any) -> bool:  # below 0.01 %: "<0.01" or a value under 0.01
        return m is not None and m.value is not None and (m.value < 0.01 or (m.comparator == "<" and m.value <= 0.01))

    def inclusive(m: Any) -> bool:  # at most 0.01 %
        return m is not None and m.value is not None and m.value <= 0.01

    def negative(m: Any) -> bool:
        return m is not None and m.interpretation == "NEG"

    with_pre = sum(m is not None for m in pre)
    with_last = sum(m is not None for m in last)
    with_c1 = sum(m is not None for m in c1)
    return {  # denominators: patients with that MRD result recorded
        "pre_positive": proportion(sum(m is not None and m.interpretation == "POS" for m in pre), with_pre),
        "pre_above_1_percent": proportion(sum(m is not None and m.value is not None and m.value > 1 for m in pre), with_pre),
        "after_last_negative": proportion(sum(negative(m) for m in last), with_last),
        "after_last_strict": proportion(sum(strict(m) for m in last), with_last),
        "after_last_inclusive": proportion(sum(inclusive(m) for m in last), with_last),
        "after_cycle1_strict": proportion(sum(strict(m) for m in c1), with_c1),
        "after_cycle1_inclusive": proportion(sum(inclusive(m) for m in c1), with_c1),
        "pre_percent_by_status": {g: _summary([m.value for c in cohort if _status_group(c.status_at_start) == g
                                               and (m := c.mrd_pre) is not None and m.value is not None])
                                  for g in sorted({_status_group(c.status_at_start) for c in cohort})},
    }


def _mrd_negative_after(c: PatientCourse) -> bool:
    """MRD-negative after blinatumomab: the last post-cycle MRD is NEG, or, when no post-cycle
    value is recorded, the recorded response implies it (CR with MRD negativity, MRD clearance)."""
    last = c.mrd_after()
    if last is not None:
        return last.interpretation == "NEG"
    return c.response in CR_MRD_NEGATIVE


def _response_figures(cohort: list[PatientCourse]) -> dict[str, Any]:
    n = len(cohort)
    counts = Counter(c.response or "not-assessed" for c in cohort)
    high = [c for c in cohort if (m := c.mrd_pre) is not None and m.value is not None and m.value > 1]
    low_pos = [c for c in cohort if (m := c.mrd_pre) is not None and (m.value is None or m.value <= 1)
               and m.interpretation == "POS"]
    by_status: dict[str, Any] = {}
    for group in sorted({_status_group(c.status_at_start) for c in cohort}):
        members = [c for c in cohort if _status_group(c.status_at_start) == group]
        by_status[group] = {"n": len(members), **{r: sum(c.response == r for c in members) for r in RESPONSES},
                            "cr": proportion(sum(c.response in CR_MRD_NEGATIVE for c in members), len(members)),
                            "cr_morphological": proportion(sum(c.response in CR_MORPHOLOGICAL for c in members), len(members))}
    return {
        "counts": {r: counts.get(r, 0) for r in (*RESPONSES, "not-assessed")},
        "cr": proportion(sum(c.response in CR_MRD_NEGATIVE for c in cohort), n),
        "cr_morphological": proportion(sum(c.response in CR_MORPHOLOGICAL for c in cohort), n),
        "mrd_negative_after": proportion(sum(_mrd_negative_after(c) for c in cohort), n),
        "cr_mrd_negative_among_above_1_percent": proportion(sum(_mrd_negative_after(c) for c in high), len(high)),
        "pr_among_above_1_percent": proportion(sum(c.response == "pr" for c in high), len(high)),
        "pd_among_above_1_percent": proportion(sum(c.response == "pd" for c in high), len(high)),
        "mrd_clearance_among_mrd_positive_below_1_percent": proportion(sum(_mrd_negative_after(c) for c in low_pos), len(low_pos)),
        "by_status_at_start": by_status,
        "by_cycles": {str(k): {"n": sum(c.cycles == k for c in cohort),
                               "cr": sum(c.cycles == k and c.response in CR_MRD_NEGATIVE for c in cohort)}
                      for k in sorted({c.cycles for c in cohort})},
    }


MEDDRA = "https://www.meddra.org"


@functools.cache
def _ctcae_terms() -> dict[str, str]:
    """MedDRA code -> CTCAE v5.0 term, from the shipped table mappings/codes/ctcae_v5.yaml (NCI's
    CTCAE_v5.0_2017-11-27.xlsx)."""
    from adapter.config import ROOT
    from adapter.spec.loader import load_code_table

    table = load_code_table(ROOT / "mappings" / "codes" / "ctcae_v5.yaml")
    out = {}
    for concept in table.concepts():
        # a CTCAE term with a project code carries its MedDRA coding in extra.meddra
        meddra = {"code": concept.code, "display": concept.display} if concept.system == MEDDRA else concept.extra.get("meddra")
        if meddra and meddra.get("code") and meddra.get("display"):
            out[str(meddra["code"])] = str(meddra["display"])
    return out


def event_label(term: str) -> str:
    """How the figures name an adverse-event term: a project adverse-event-term code as it is
    (``crs``); a MedDRA code (``meddra:10016558``, counted by code) as its CTCAE v5.0 term in lower
    case (``fever``), so a site's text term and another site's MedDRA-coded one meet; a MedDRA code
    outside CTCAE v5.0 stays ``meddra:<code>``; a site-local text as its lower-cased text."""
    if term.startswith("meddra:"):
        name = _ctcae_terms().get(term[len("meddra:"):])
        return " ".join(name.split()).lower() if name else term
    return term


def _toxicity(cohort: list[PatientCourse]) -> dict[str, Any]:
    n = len(cohort)

    def worst(c: PatientCourse, term: str) -> int | None:
        grades = [g or 0 for t, g in c.adverse_events if event_label(t) == term]
        return max(grades) if grades else None

    crs = [worst(c, "crs") for c in cohort]
    icans = [worst(c, "icans") for c in cohort]
    by_grade = Counter(g for g in crs if g is not None)
    terms = Counter(t for c in cohort for t in {event_label(t) for t, _ in c.adverse_events})
    return {
        "crs_any": proportion(sum(g is not None for g in crs), n),
        "crs_grade_3_plus": proportion(sum(g is not None and g >= 3 for g in crs), n),
        "crs_by_worst_grade": {str(g): by_grade[g] for g in sorted(by_grade)},
        "worst_grade_by_event": {t: dict(sorted(Counter(str(worst(c, t)) for c in cohort if worst(c, t) is not None).items()))
                                 for t in sorted(terms)},
        "icans_any": proportion(sum(g is not None for g in icans), n),
        "icans_grade_3_plus": proportion(sum(g is not None and g >= 3 for g in icans), n),
        "patients_with_event": dict(sorted(terms.items())),
        "picu_admissions": sum(c.picu_admissions for c in cohort),
        "patients_admitted_to_picu": sum(c.picu_admissions > 0 for c in cohort),
    }


def _vials(cohort: list[PatientCourse], drug_costs: Mapping[str, DrugCost]) -> dict[str, Any]:
    """Vials used against a standard 28-day course, and their cost (seed 002 TABLE 2 and Methods):
    totals over the patients with a dispense record; the saving compares only patients with both
    counts. Cost per site in its own currency, and in US dollars at the site's declared rate; the
    pooled cost is the sum in US dollars over priced sites."""
    recorded = [c for c in cohort if c.vials_used is not None]
    out: dict[str, Any] = {"patients_with_record": len(recorded)}
    if not recorded:
        return out
    used = [c.vials_used or 0 for c in recorded]
    out["used"] = {"total": sum(used), **_summary([float(v) for v in used])}
    both = [c for c in recorded if c.vials_standard_course is not None]
    if both:
        std = [c.vials_standard_course or 0 for c in both]
        saved = sum(std) - sum(c.vials_used or 0 for c in both)
        out["standard_course"] = {"total": sum(std), **_summary([float(v) for v in std])}
        out["saved"] = saved
        out["saving_share"] = round(saved / sum(std), 4) if sum(std) else None
    sites = sorted({c.site for c in recorded})
    priced = [s for s in sites if s in drug_costs]
    if priced:
        by_currency: dict[str, dict[str, float]] = {}
        usd = {"used": 0.0, "standard_course": 0.0}
        for s in priced:
            cost = drug_costs[s]
            site_used = sum(c.vials_used or 0 for c in recorded if c.site == s) * cost.price_per_vial
            site_std = sum(c.vials_standard_course or 0 for c in both if c.site == s) * cost.price_per_vial
            cur = by_currency.setdefault(cost.currency, {"used": 0.0, "standard_course": 0.0})
            cur["used"] += site_used
            cur["standard_course"] += site_std
            usd["used"] += site_used / cost.per_usd
            usd["standard_course"] += site_std / cost.per_usd
        out["cost"] = {
            "by_currency": {k: {n: round(v, 2) for n, v in cur.items()} for k, cur in sorted(by_currency.items())},
            "usd": {"used": round(usd["used"], 2), "standard_course": round(usd["standard_course"], 2),
                    "saving": round(usd["standard_course"] - usd["used"], 2),
                    "saving_share": round(1 - usd["used"] / usd["standard_course"], 4) if usd["standard_course"] else None},
            "price_per_vial": {s: {"value": drug_costs[s].price_per_vial, "currency": drug_costs[s].currency,
                                   "per_usd": drug_costs[s].per_usd, "source": drug_costs[s].source} for s in priced},
            "sites_unpriced": [s for s in sites if s not in drug_costs],
        }
    return out


def _exposure(cohort: list[PatientCourse], drug_costs: Mapping[str, DrugCost]) -> dict[str, Any]:
    cycles = Counter(c.cycles for c in cohort)
    days = sum(c.infusion_days for c in cohort)
    out_days = sum(c.outpatient_days for c in cohort)
    return {
        "cycles_total": sum(c.cycles for c in cohort),
        "patients_by_cycles": {str(k): cycles[k] for k in sorted(cycles)},
        "cycles_per_patient": _summary([float(c.cycles) for c in cohort]),
        "infusion_days": days,
        "outpatient_infusion_days": out_days,
        "outpatient_share": round(out_days / days, 4) if days else None,
        "entirely_outpatient": proportion(sum(c.infusion_days > 0 and c.outpatient_days == c.infusion_days for c in cohort),
                                          len(cohort)),
        "course_days": _summary([float(d) for c in cohort for d in c.course_days]),
        "stopped_early": sum(c.stopped for c in cohort),
        "vials": _vials(cohort, drug_costs),
    }


def _survival(cohort: list[PatientCourse], timepoint: float, stratify: str | None, origin: str = "start") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for endpoint in ("os", "rfs"):
        data = survival_data(cohort, endpoint, origin)
        definition = DEFINITIONS[endpoint] if origin == "start" else {**DEFINITIONS[endpoint], "origin": "date of HSCT"}
        fig = {"definition": definition, **km_at(data, timepoint)}
        if stratify:
            key = STRATA[stratify]
            groups = {g: survival_data([c for c in cohort if key(c) == g], endpoint, origin)
                      for g in sorted({key(c) for c in cohort})}
            fig["strata"] = {g: km_at(d, timepoint) for g, d in groups.items()}
            fig["logrank"] = logrank(groups)
        out[endpoint] = fig
    return out


def _with_iqr(values: list[float]) -> dict[str, Any]:
    """:func:`_summary` with the quartiles (``q1``, ``q3``: statistics.quantiles, method 'inclusive')."""
    out = _summary(values)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        out.update(q1=round(q1, 2), q3=round(q3, 2))
    return out


def _hsct(cohort: list[PatientCourse]) -> dict[str, Any]:
    """HSCT rate with donor figures, days from the start of blinatumomab to HSCT, the bridging
    interval (from the end of the last blinatumomab infusion to HSCT), engraftment days with their
    IQR, graft failures, and days from HSCT to the last follow-up of the survivors (seed 004's
    "median follow up following HSCT"). Every donor figure describes the first graft by date."""
    done = [c for c in cohort if c.hsct is not None]
    survivors = [c for c in done if not c.deceased and c.last_follow_up is not None]

    def count(key: str) -> dict[str, int]:
        return dict(sorted(Counter(c.donor.get(key, "unknown") for c in done).items()))

    return {**proportion(len(done), len(cohort)),
            "more_than_one_graft": sum(c.hsct_count > 1 for c in done),
            "hla_match": count("hla_match"),
            "hla_as_written": count("hla_as_written"),
            "relatedness": count("relatedness"),
            "stem_cell_source": count("stem_cell_source"),
            "conditioning": count("conditioning"),
            "days_from_start": _summary([float((c.hsct - c.start).days) for c in done if c.start and c.hsct]),
            "bridging_days": _with_iqr([float((c.hsct - c.last_infusion_end).days) for c in done
                                        if c.hsct and c.last_infusion_end and c.hsct >= c.last_infusion_end]),
            "neutrophil_engraftment_day": _with_iqr([float(c.neutrophil_engraftment_day) for c in done
                                                     if c.neutrophil_engraftment_day is not None]),
            "platelet_engraftment_day": _with_iqr([float(c.platelet_engraftment_day) for c in done
                                                   if c.platelet_engraftment_day is not None]),
            "graft_failure": sum(c.graft_failure for c in done),
            "follow_up_days_survivors": _summary([float((c.last_follow_up - c.hsct).days) for c in survivors
                                                  if c.last_follow_up and c.hsct])}


def _follow_up(cohort: list[PatientCourse]) -> dict[str, Any]:
    os_data = survival_data(cohort, "os")
    alive = [_months(c.start, c.last_follow_up) for c in cohort if not c.deceased and c.start and c.last_follow_up]
    from_dx = [_months(c.diagnosis, c.end_of_follow_up) for c in cohort if c.diagnosis and c.end_of_follow_up]
    return {
        "reverse_km_median_months": reverse_km_median(os_data),
        "survivors_from_start_months": _summary(alive),
        "from_diagnosis_months": _summary(from_dx),
    }


def group_figures(cohort: list[PatientCourse], timepoint: float = 36.0, stratify: str | None = None,
                  drug_costs: Mapping[str, DrugCost] | None = None) -> dict[str, Any]:
    """Every figure for one group of patients (a site, or the pooled network). ``drug_costs`` maps a
    site code to its declared vial price (``site.yaml`` ``drug_cost``)."""
    n = len(cohort)
    deaths = [c for c in cohort if c.deceased]
    ages = [a for c in cohort if (a := c.age_years()) is not None]
    decimal_ages = [(c.start - c.birth_date).days / 365.25 for c in cohort if c.start and c.birth_date]
    return {
        "n": n,
        "sex": dict(sorted(Counter(c.gender or "unknown" for c in cohort).items())),
        "age_years": {**_summary(ages), "infants_under_1": sum(a < 1 for a in ages)},
        "age_decimal_years": _summary(decimal_ages),
        "age_groups": {"<1": sum(a < 1 for a in decimal_ages), "1-10": sum(1 <= a < 11 for a in decimal_ages),
                       ">10": sum(a >= 11 for a in decimal_ages)},
        "status_at_start": dict(sorted(Counter(_status_group(c.status_at_start) for c in cohort).items())),
        "exposure": _exposure(cohort, drug_costs or {}),
        "mrd": _mrd_figures(cohort),
        "response": _response_figures(cohort),
        "indication": {"after_relapse": sum(_after_relapse(c) for c in cohort),
                       "first_line_refractory": sum(not _after_relapse(c) for c in cohort)},
        "hsct": _hsct(cohort),
        "toxicity": _toxicity(cohort),
        "deaths": {**proportion(len(deaths), n),
                   "date_not_known": sum(c.death is None for c in deaths),
                   "causes": dict(sorted(Counter(c.death_cause or "unknown" for c in deaths).items())),
                   "related_to_blinatumomab": sum(c.death_related_to_blinatumomab for c in deaths),
                   "after_hsct": sum(bool(c.hsct and c.death and c.death >= c.hsct) for c in deaths)},
        "relapse_or_progression": proportion(sum(c.relapse is not None for c in cohort), n),
        "therapies": {intent: dict(sorted(Counter(code for c in cohort for code in {t for t, i in c.therapies if i == intent})
                                          .items()))
                      for intent in sorted({i for c in cohort for _, i in c.therapies})},
        "survival": _survival(cohort, timepoint, stratify),
        "survival_from_hsct": _survival([c for c in cohort if c.hsct], timepoint, stratify, origin="hsct"),
        "follow_up": _follow_up(cohort),
    }


def outcomes_report(cohort: list[PatientCourse], timepoint: float = 36.0, stratify: str | None = None,
                    site: str | None = None, drug_costs: Mapping[str, DrugCost] | None = None) -> dict[str, Any]:
    """``{definitions, timepoint_months, sites: {site: figures}, pooled: figures}``. Raises
    ``ValueError`` for an unknown ``stratify`` key (one of :data:`STRATA`)."""
    if stratify is not None and stratify not in STRATA:
        raise ValueError(f"stratify must be one of {', '.join(STRATA)}, not {stratify!r}")
    if site is not None:
        cohort = [c for c in cohort if c.site == site]
    sites = sorted({c.site for c in cohort})
    pooled = group_figures(cohort, timepoint, stratify, drug_costs)
    pooled["heterogeneity"] = _heterogeneity(cohort, sites)
    return {
        "definitions": DEFINITIONS,
        "timepoint_months": timepoint,
        "stratify": stratify,
        "sites": {s: group_figures([c for c in cohort if c.site == s], timepoint, stratify, drug_costs) for s in sites},
        "pooled": pooled,
    }


#: The pooled rates whose heterogeneity across sites is tested: name -> "has the outcome".
HETEROGENEITY: dict[str, Callable[[PatientCourse], bool]] = {
    "cr": lambda c: c.response in CR_MRD_NEGATIVE,
    "mrd_negative_after_cycle1": lambda c: (m := c.mrd_after(1)) is not None and m.interpretation == "NEG",
    "hsct": lambda c: c.hsct is not None,
    "crs_any": lambda c: any(t == "crs" for t, _ in c.adverse_events),
    "death": lambda c: c.deceased,
}


def _heterogeneity(cohort: list[PatientCourse], sites: list[str]) -> dict[str, Any]:
    """Chi-square tests of whether each pooled rate differs across sites (stats.heterogeneity);
    empty with one site."""
    if len(sites) < 2:
        return {}
    out = {}
    for name, has in HETEROGENEITY.items():
        counts = {s: (sum(has(c) for c in cohort if c.site == s), sum(c.site == s for c in cohort)) for s in sites}
        out[name] = heterogeneity(counts)
    return out
