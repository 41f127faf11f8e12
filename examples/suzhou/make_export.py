"""Write the synthetic Suzhou research-office workbook and print the figures it must give.

The cohort follows the published aggregates of Xie J, Liu S, Zhou M, Wang Y, He H, Xiao P, Hu S, Lu J.
"Short-course blinatumomab for refractory/relapse precursor B acute lymphoblastic leukemia in children."
Front Pediatr 2023;11:1187607, doi:10.3389/fped.2023.1187607 (Children's Hospital of Soochow University):
33 children, 11 refractory and 22 relapsed, a 14-day course between August 2021 and November 2022;
CR 26/33 (refractory 10/11, relapsed 16/22); 15 of the 26 in CR bridged to HSCT; 4 deaths (OS 29/33: 1
among the 26 in CR, a transplanted patient, and 3 among the 7 not in CR); DFS 28/33 (1 event among those
in CR, 4 among those not); CRS in 18 (54.5 %). Everything else (names, dates, ages, MRD values, CTCAE
terms and grades, grafts, engraftment, conditioning, subsequent therapy) is synthetic, made up here so
that the export exercises what issue 18 asks for. No real patient is described.

Run from the repository root: ``.venv/bin/python examples/suzhou/make_export.py`` writes
``examples/suzhou/suzhou_research_workbook.xlsx`` and prints the figures block of EXPECTED.md. The
figures are computed here from the table below, independently of the adapter (plain arithmetic: Wilson
intervals, the product-limit estimate), so the tests compare two separate computations.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from statistics import median, quantiles

HERE = Path(__file__).parent
OUT = HERE / "suzhou_research_workbook.xlsx"
CUTOFF = date(2023, 6, 30)
MONTH = Decimal("30.4375")

FAMILY = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗梁宋郑谢韩唐冯于董萧程曹"
GIVEN = ["子涵", "欣怡", "梓轩", "一诺", "浩然", "雨桐", "宇轩", "可馨", "俊熙", "诗涵", "沐阳"]


@dataclass
class Case:
    """One synthetic patient. ``response``: CR MRD- | CR MRD+ | CR (MRD未测) | NR | PD."""

    status: str  # 难治 refractory | 复发 relapsed
    response: str
    hsct: bool = False
    dead: bool = False
    death_months: float | None = None  # None with dead: date of death not known ("-")
    cause: str = "-"
    progression_months: float | None = None
    therapy: str = "-"  # subsequent therapy when no HSCT
    intent: str = "-"
    grafts: list[dict[str, object]] = field(default_factory=list)


# 11 refractory (10 CR), 22 relapsed (16 CR); CR: 20 MRD-negative, 5 MRD-positive, 1 MRD not done.
R, L = "难治", "复发"
CASES: list[Case] = [
    Case(R, "CR MRD-", hsct=True), Case(R, "CR MRD-", hsct=True), Case(R, "CR MRD-", therapy="化疗", intent="巩固"),
    Case(R, "CR MRD+", hsct=True), Case(R, "CR MRD-", therapy="贝林妥欧单抗", intent="巩固"),
    Case(R, "CR MRD-", hsct=True), Case(R, "CR MRD-", therapy="化疗", intent="巩固"), Case(R, "CR MRD-", hsct=True),
    Case(R, "CR (MRD未测)", therapy="化疗", intent="巩固"), Case(R, "CR MRD-", hsct=True),
    Case(R, "NR", therapy="CAR-T", intent="挽救"),
    Case(L, "CR MRD-", hsct=True), Case(L, "CR MRD+", hsct=True), Case(L, "CR MRD-", therapy="化疗", intent="巩固"),
    Case(L, "CR MRD-", hsct=True, dead=True, death_months=7.3, cause="Acute GVHD"),
    Case(L, "CR MRD-", therapy="贝林妥欧单抗", intent="巩固"), Case(L, "CR MRD+", hsct=True),
    Case(L, "CR MRD-", hsct=True), Case(L, "CR MRD-", therapy="化疗", intent="巩固"), Case(L, "CR MRD-", hsct=True),
    Case(L, "CR MRD+", therapy="贝林妥欧单抗", intent="巩固"), Case(L, "CR MRD-", hsct=True),
    Case(L, "CR MRD-", therapy="化疗", intent="巩固"), Case(L, "CR MRD-", hsct=True), Case(L, "CR MRD+", hsct=True),
    Case(L, "CR MRD-", therapy="化疗", intent="巩固"), Case(L, "CR MRD-", therapy="化疗", intent="巩固"),
    Case(L, "NR", therapy="CAR-T", intent="挽救", dead=True, death_months=4.6, cause="Relapse"),
    Case(L, "NR", therapy="化疗", intent="挽救", dead=True, death_months=2.2, cause="Sepsis"),
    Case(L, "PD", therapy="放弃治疗", dead=True),  # vital status dead, follow-up not recorded
    Case(L, "NR", therapy="CAR-T", intent="挽救", progression_months=3.1),
    Case(L, "PD", therapy="姑息治疗"),
    Case(L, "NR", therapy="CAR-T", intent="挽救"),
]
assert len(CASES) == 33

# first graft of the 15 transplanted, in patient order: donor, HLA, source, conditioning, ANC day, PLT day
GRAFTS = [
    ("父亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", 12, 15), ("同胞", "10/10", "外周血", "Bu/Cy", 11, 13),
    ("母亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", None, None),  # graft failure, second graft below
    ("父亲", "5/10", "骨髓+外周血", "TBI/Cy/Flu/ATG", 13, 18), ("无关供者", "8/10", "外周血", "Bu/Flu/Ara-C/ATG", 14, 16),
    ("母亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", 12, 21), ("父亲", "5/10", "骨髓+外周血", "TBI/Cy/Flu/ATG", 11, 14),
    ("同胞", "10/10", "外周血", "Bu/Cy", 10, 12), ("无关供者", "9/10", "外周血", "Bu/Flu/Ara-C/ATG", 15, 24),
    ("父亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", 13, 17), ("无关供者", "7/10", "脐血", "Bu/Flu/Cy/ATG", 16, 25),
    ("母亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", None, None),  # graft failure, second graft below
    ("同胞", "10/10", "外周血", "Bu/Cy", 11, 13), ("父亲", "5/10", "骨髓+外周血", "TBI/Cy/Flu/ATG", 12, 16),
    ("父亲", "5/10", "骨髓+外周血", "Bu/Cy/Flu/ATG", 14, 19),
]
# second grafts (after graft failure of the first): index among the transplanted -> (days after the first, donor...)
SECOND = {2: (58, "父亲", "5/10", "骨髓+外周血", "Flu/Cy/ATG", 13, 20), 11: (64, "父亲", "6/10", "外周血", "Flu/Cy/ATG", 12, 18)}
BRIDGING = [28, 35, 41, 30, 52, 33, 26, 38, 45, 31, 60, 29, 36, 40, 27]  # days from the end of blinatumomab to HSCT

AGES = [7.4, 12.8, 3.6, 9.1, 15.2, 5.5, 10.3, 2.9, 13.7, 6.8, 11.6, 4.2, 8.9, 16.4, 1.8, 14.1, 7.9, 3.3, 10.8, 12.2,
        5.1, 9.6, 2.4, 13.3, 6.2, 11.1, 8.3, 4.7, 15.8, 1.5, 10.1, 7.2, 12.6]
MALE = [i % 7 not in (1, 4, 6) for i in range(33)]  # 19 boys, 14 girls (pattern; the paper's split is not used)
FUSION = ["ETV6-RUNX1", "阴性", "BCR-ABL1", "阴性", "-", "KMT2A-AFF1", "阴性", "TCF3-PBX1", "阴性", "ETV6-RUNX1", "阴性"]
BLASTS = ["45.5", "<5", "12.0", "78.5", "-", "33.0", ">90", "8.5", "61.0", "<5", "22.5"]
PRE_HIGH = ["12.5", "0.85", "35.2", "4.6", "0.12", "-", "68.0", "1.9", "0.45", "22.1", "2.7"]

#: CTCAE v5.0 terms (as written in the sheet) given to patient i when rule(i) holds, grade by grade(i).
AE_RULES: list[tuple[str, object, object]] = [
    ("Fever", lambda i: i % 3 != 2, lambda i: 1 + (i % 2)),
    ("Neutrophil count decreased", lambda i: i % 2 == 0 or i % 5 == 0, lambda i: 3 + (i % 2)),
    ("Platelet count decreased", lambda i: i % 3 == 0, lambda i: 2 + (i // 3) % 3),
    ("Anemia", lambda i: i % 4 in (1, 2), lambda i: 2 + (i // 4) % 2),
    ("Febrile neutropenia", lambda i: i % 4 == 0, lambda i: 3 + (i // 4) % 2),
    ("Alanine aminotransferase increased", lambda i: i % 4 == 3 or i % 7 == 0, lambda i: 1 + (i % 3)),
    ("Aspartate aminotransferase increased", lambda i: i % 5 in (1, 3), lambda i: 1 + (i % 2)),
    ("Blood bilirubin increased", lambda i: i % 11 in (2, 5, 9), lambda i: 1 + (i // 11) % 3),
    ("Hypokalemia", lambda i: i % 6 == 1, lambda i: 1 + (i // 6) % 3),
    ("Hypoalbuminemia", lambda i: i % 7 == 3, lambda i: 2 + (i // 7) % 2),
    ("Fibrinogen decreased", lambda i: i % 8 == 5, lambda i: 1 + (i // 8) % 3),
    ("Activated partial thromboplastin time prolonged", lambda i: i % 10 == 4, lambda i: 1),
    ("Headache", lambda i: i % 9 == 2, lambda i: 1),
    ("Vomiting", lambda i: i % 10 == 7, lambda i: 1 + (i // 10) % 2),
    ("Diarrhea", lambda i: i % 13 == 6, lambda i: 1 + (i // 13) % 3),
    ("Lung infection", lambda i: i % 12 == 8, lambda i: 2 + (i // 12) % 2),
    ("Seizure", lambda i: i == 21, lambda i: 2),
]
#: CRS (ASTCT grading): 18 patients, worst grade 1 x12, 2 x4, 3 x2; hypotension with every CRS of grade >= 2.
CRS = {i: g for i, g in zip([0, 1, 3, 4, 6, 8, 9, 11, 12, 14, 16, 18, 20, 22, 24, 26, 28, 31],
                            [1, 2, 1, 1, 3, 1, 1, 2, 1, 1, 1, 2, 1, 1, 3, 1, 2, 1], strict=True)}
ICANS = {6: 2, 24: 1, 21: 1}  # ASTCT
#: Terms that have a project adverse-event-term code (mappings/suzhou/tables/ctcae_term.yaml).
PROJECT_TERMS = {"Cytokine release syndrome": "crs", "ICANS": "icans", "Febrile neutropenia": "febrile-neutropenia",
                 "Sepsis": "sepsis", "Neutrophil count decreased": "neutropenia", "Acute GVHD": "acute-gvhd"}


def rnd(x: Decimal) -> int:
    return int(x.to_integral_value(rounding=ROUND_HALF_EVEN))


def add_months(d: date, months: float) -> date:
    """The adapter's documented rule: a month is 30.4375 days, rounded to the day."""
    days = Decimal(str(months)) * MONTH
    assert days % 1 != Decimal("0.5"), months  # no half-day ties: the rounding rule would matter
    return d + timedelta(days=rnd(days))


def wilson(k: int, n: int) -> list[float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(centre - half, 4), round(centre + half, 4)]


def prop(k: int, n: int) -> dict[str, object]:
    return {"count": k, "n": n, "rate": round(k / n, 4), "ci95": wilson(k, n)}


def km(times: list[tuple[float, int]], t: float) -> dict[str, object]:
    """Product-limit estimate at t with the exponential Greenwood 95 % interval."""
    s, var = 1.0, 0.0
    for u in sorted({u for u, e in times if e and u <= t}):
        at_risk = sum(1 for v, _ in times if v >= u)
        d = sum(1 for v, e in times if v == u and e)
        s *= 1 - d / at_risk
        var += d / (at_risk * (at_risk - d))
    z = 1.959963984540054
    c, se = math.log(-math.log(s)), math.sqrt(var) / abs(math.log(s))
    return {"n": len(times), "events": sum(e for _, e in times), "survival": round(s, 4),
            "ci95": [round(math.exp(-math.exp(c + z * se)), 4), round(math.exp(-math.exp(c - z * se)), 4)]}


def build() -> tuple[list[list[object]], list[list[object]], list[list[object]], dict[str, object]]:  # noqa: C901, PLR0915
    patients: list[list[object]] = []
    grafts: list[list[object]] = []
    events: list[list[object]] = []
    os_times, rfs_times = [], []
    worst: dict[str, dict[int, int]] = {}
    hsct_rows = []
    therapies: Counter[tuple[str, str]] = Counter()
    transplanted = 0
    for i, c in enumerate(CASES):
        mrn = f"ZY{2021080 + i * 37:07d}"
        name = FAMILY[i % len(FAMILY)] + GIVEN[i % len(GIVEN)]
        start = date(2021, 8, 2) + timedelta(days=14 * i)
        end = start + timedelta(days=13)
        cr = c.response.startswith("CR")
        pre = PRE_HIGH[i % len(PRE_HIGH)]
        post = {"CR MRD-": "<0.01", "CR MRD+": ["0.05", "0.12", "0.31", "0.02", "1.10"][i % 5], "CR (MRD未测)": "-",
                "NR": "28.4", "PD": "71.5"}[c.response]
        alive_months = round(float(Decimal((CUTOFF - start).days) / MONTH), 1)
        if c.dead:
            fu: object = c.death_months if c.death_months is not None else "-"
        else:
            fu = alive_months
        relapse = c.progression_months
        patients.append([mrn, name, "男" if MALE[i] else "女", AGES[i], c.status, 1 if c.status == R else 2 + i % 2,
                         FUSION[i % len(FUSION)], BLASTS[i % len(BLASTS)], datetime.combine(start, datetime.min.time()),
                         datetime.combine(end, datetime.min.time()), pre, post, c.response,
                         "HSCT" if c.hsct else c.therapy, "-" if c.hsct else c.intent, "是" if relapse else "否",
                         relapse if relapse else "-", "死亡" if c.dead else "存活", fu, c.cause])
        if c.therapy not in ("-",) and not c.hsct:
            code = {"化疗": "chemotherapy", "贝林妥欧单抗": "blinatumomab", "CAR-T": "car-t", "放弃治疗": "treatment-abandoned",
                    "姑息治疗": "palliative-care"}[c.therapy]
            therapies[({"巩固": "consolidation", "挽救": "salvage"}.get(c.intent, "unstated"), code)] += 1
        # survival: origin = start; death dates from follow-up months (approximate); unknown date excluded
        if c.dead and c.death_months is None:
            pass
        else:
            when = add_months(start, c.death_months) if c.dead else add_months(start, alive_months)
            months = (when - start).days / float(MONTH)
            os_times.append((months, int(c.dead)))
            if relapse is not None:
                rfs_times.append(((add_months(start, relapse) - start).days / float(MONTH), 1))
            else:
                rfs_times.append((months, int(c.dead)))
        if c.hsct:
            donor, hla, source, cond, anc, plt = GRAFTS[transplanted]
            day0 = end + timedelta(days=BRIDGING[transplanted])
            grafts.append([mrn, 1, datetime.combine(day0, datetime.min.time()), donor, hla, source, cond,
                           anc if anc else "-", plt if plt else "-", "否" if anc else "是"])
            hsct_rows.append({"donor": donor, "hla": hla, "source": source, "conditioning": cond, "anc": anc, "plt": plt,
                              "failed": anc is None, "bridging": BRIDGING[transplanted], "from_start": (day0 - start).days,
                              "second": transplanted in SECOND})
            if transplanted in SECOND:
                after, d2, h2, s2, c2, a2, p2 = SECOND[transplanted]
                grafts.append([mrn, 2, datetime.combine(day0 + timedelta(days=after), datetime.min.time()), d2, h2, s2, c2,
                               a2, p2, "否"])
            if c.dead:  # acute GVHD, grade 4, day +40 of the first graft
                events.append([mrn, "Acute GVHD", 4, datetime.combine(day0 + timedelta(days=40), datetime.min.time()), "否"])
                worst.setdefault("Acute GVHD", {})[i] = 4
            transplanted += 1
        for term, rule, grade in AE_RULES:
            if rule(i):  # type: ignore[operator]
                g = grade(i)  # type: ignore[operator]
                if term == "Neutrophil count decreased" and c.cause == "Sepsis":
                    g = 4
                events.append([mrn, term, g, datetime.combine(start + timedelta(days=2 + (i % 9)), datetime.min.time()), "是"])
                worst.setdefault(term, {})[i] = max(worst.get(term, {}).get(i, 0), g)
        if i in CRS:
            events.append([mrn, "Cytokine release syndrome", CRS[i], datetime.combine(start + timedelta(days=1), datetime.min.time()), "是"])
            worst.setdefault("Cytokine release syndrome", {})[i] = CRS[i]
            if CRS[i] >= 2:
                events.append([mrn, "Hypotension", CRS[i], datetime.combine(start + timedelta(days=1), datetime.min.time()), "是"])
                worst.setdefault("Hypotension", {})[i] = CRS[i]
        if i in ICANS:
            events.append([mrn, "ICANS", ICANS[i], datetime.combine(start + timedelta(days=3), datetime.min.time()), "是"])
            worst.setdefault("ICANS", {})[i] = ICANS[i]
        if c.cause == "Sepsis":  # grade 5: fatal
            when = add_months(start, c.death_months or 0) - timedelta(days=3)
            events.append([mrn, "Sepsis", 5, datetime.combine(when, datetime.min.time()), "否"])
            worst.setdefault("Sepsis", {})[i] = 5

    n = len(CASES)
    cr = [c.response.startswith("CR") for c in CASES]
    hs = hsct_rows
    anc = sorted(float(h["anc"]) for h in hs if h["anc"])  # type: ignore[arg-type]
    plt = sorted(float(h["plt"]) for h in hs if h["plt"])  # type: ignore[arg-type]
    bridging = [float(h["bridging"]) for h in hs]  # type: ignore[arg-type]

    def iqr(v: list[float]) -> dict[str, float]:
        q1, _, q3 = quantiles(v, n=4, method="inclusive")
        return {"n": len(v), "median": round(median(v), 2), "q1": round(q1, 2), "q3": round(q3, 2),
                "min": min(v), "max": max(v)}

    source_code = {"骨髓+外周血": "bone-marrow+pbsc", "外周血": "pbsc", "脐血": "cord-blood"}
    figures: dict[str, object] = {
        "n": n,
        "sex": dict(sorted(Counter("male" if m else "female" for m in MALE).items())),
        "age_decimal_years_median": median(AGES),
        "status_at_start": {"refractory": sum(c.status == R for c in CASES), "relapse": sum(c.status == L for c in CASES)},
        "response_counts": dict(sorted(Counter({"CR MRD-": "cr-mrd-negative", "CR MRD+": "cr-mrd-positive",
                                                "CR (MRD未测)": "cr-mrd-unknown", "NR": "nr", "PD": "pd"}[c.response]
                                               for c in CASES).items())),
        "cr_morphological": prop(sum(cr), n),
        "cr_mrd_negative": prop(sum(c.response == "CR MRD-" for c in CASES), n),
        "cr_morphological_refractory": prop(sum(cr[i] for i, c in enumerate(CASES) if c.status == R),
                                            sum(c.status == R for c in CASES)),
        "cr_morphological_relapse": prop(sum(cr[i] for i, c in enumerate(CASES) if c.status == L),
                                         sum(c.status == L for c in CASES)),
        "hsct": {**prop(len(hs), n), "more_than_one_graft": sum(bool(h["second"]) for h in hs),
                 "hla_as_written": dict(sorted(Counter(str(h["hla"]) for h in hs).items())),
                 "hla_match": dict(sorted(Counter("identical" if h["hla"] == "10/10" else "haploidentical"
                                                  if int(str(h["hla"]).split("/")[0]) <= 5 else "mismatched" for h in hs).items())),
                 "relatedness": dict(sorted(Counter("unrelated" if h["donor"] == "无关供者" else "related" for h in hs).items())),
                 "stem_cell_source": dict(sorted(Counter(source_code[str(h["source"])] for h in hs).items())),
                 "conditioning": dict(sorted(Counter(str(h["conditioning"]) for h in hs).items())),
                 "graft_failure": sum(bool(h["failed"]) for h in hs),
                 "bridging_days": iqr(bridging),
                 "neutrophil_engraftment_day": iqr(anc), "platelet_engraftment_day": iqr(plt)},
        "crs_any": prop(len(CRS), n),
        "crs_by_worst_grade": dict(sorted(Counter(str(g) for g in CRS.values()).items())),
        # keyed as the figures count a term: the project adverse-event-term code where the site's table
        # gives one, else the CTCAE v5.0 term (lower case)
        "adverse_events_worst_grade": dict(sorted((PROJECT_TERMS.get(t, t.lower()),
                                                   dict(sorted(Counter(str(g) for g in v.values()).items())))
                                                  for t, v in worst.items())),
        "deaths": {**prop(sum(c.dead for c in CASES), n), "date_not_known": sum(c.dead and c.death_months is None for c in CASES),
                   "causes": dict(sorted(Counter({"Acute GVHD": "acute-gvhd", "Relapse": "relapse", "Sepsis": "sepsis",
                                                  "-": "unknown"}[c.cause] for c in CASES if c.dead).items())),
                   "after_hsct": sum(c.dead and c.hsct for c in CASES)},
        "relapse_or_progression": prop(sum(c.progression_months is not None for c in CASES), n),
        "therapies": {intent: {code: k for (i2, code), k in sorted(therapies.items()) if i2 == intent}
                      for intent in sorted({i2 for i2, _ in therapies})},
        "os_12_months": {**km(os_times, 12.0), "excluded": {"dead, date of death not known": 1}},
        "rfs_12_months": {**km(rfs_times, 12.0), "excluded": {"dead, date of death not known": 1}},
    }
    return patients, grafts, events, figures


def _survival_days() -> list[dict[str, object]]:
    """Per patient with a known end: days from the start of blinatumomab to death or the end of
    follow-up (OS), to relapse/progression or death (RFS), and the groups the plan compares."""
    out = []
    for i, c in enumerate(CASES):
        start = date(2021, 8, 2) + timedelta(days=14 * i)
        if c.dead and c.death_months is None:
            continue  # date of death not known: left out of survival analyses, counted
        alive_months = round(float(Decimal((CUTOFF - start).days) / MONTH), 1)
        end = add_months(start, c.death_months if c.dead else alive_months)
        os_days = (end - start).days
        rfs = (add_months(start, c.progression_months) - start).days if c.progression_months is not None else None
        out.append({"os": (os_days, int(c.dead)), "rfs": (rfs, 1) if rfs is not None else (os_days, int(c.dead)),
                    "cr": c.response.startswith("CR"), "hsct": c.hsct, "relapsed": c.status == L})
    return out


def logrank(times: list[tuple[int, int, int]]) -> dict[str, object]:
    """Two-group log-rank (Mantel-Haenszel): (time, event, group 0/1) -> chi2 (1 df) and p."""
    o1 = e1 = v = 0.0
    for u in sorted({t for t, e, _ in times if e}):
        n = sum(1 for t, _, _ in times if t >= u)
        n1 = sum(1 for t, _, g in times if t >= u and g)
        d = sum(1 for t, e, _ in times if t == u and e)
        o1 += sum(1 for t, e, g in times if t == u and e and g)
        e1 += d * n1 / n
        if n > 1:
            v += d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1)
    chi2 = (o1 - e1) ** 2 / v
    return {"chi2": round(chi2, 4), "df": 1, "p": round(math.erfc(math.sqrt(chi2 / 2)), 4)}


def cox(times: list[tuple[int, int, int]]) -> dict[str, object]:
    """Cox model on one 0/1 covariate by Newton-Raphson on the partial likelihood (no tied event
    times here, so Breslow's and Efron's likelihoods coincide): HR, Wald 95 % interval, p."""
    assert len({t for t, e, _ in times if e}) == sum(e for _, e, _ in times), "tied event times"
    beta, info = 0.0, 0.0
    for _ in range(100):
        score, info = 0.0, 0.0
        for ti, ei, xi in times:
            if not ei:
                continue
            risk = [(x, math.exp(beta * x)) for t, _, x in times if t >= ti]
            s0 = sum(w for _, w in risk)
            s1 = sum(x * w for x, w in risk)
            s2 = sum(x * x * w for x, w in risk)
            score += xi - s1 / s0
            info += s2 / s0 - (s1 / s0) ** 2
        step = score / info
        beta += step
        if abs(step) < 1e-12:
            break
    se, z = 1 / math.sqrt(info), 1.959963984540054
    return {"hr": round(math.exp(beta), 4), "ci95": [round(math.exp(beta - z * se), 4), round(math.exp(beta + z * se), 4)],
            "p": round(math.erfc(abs(beta / se) / math.sqrt(2)), 4)}


def reverse_km_median(times: list[tuple[int, int]]) -> float:
    """Median follow-up by the reverse Kaplan-Meier method: the end of follow-up of a patient alive
    is the event, a death censors; the first time the estimate is at or below one half."""
    s = 1.0
    for u in sorted({t for t, e in times if not e}):
        at_risk = sum(1 for t, _ in times if t >= u)
        s *= 1 - sum(1 for t, e in times if t == u and not e) / at_risk
        if s <= 0.5:
            return float(u)
    raise AssertionError("the reverse KM estimate never reaches one half")


def plan_figures() -> dict[str, object]:
    """The figures plans/suzhou.yaml adds to the paper's (section "Analysis plan" of EXPECTED.md),
    in days from the start of blinatumomab, computed here by plain arithmetic."""
    sv = _survival_days()
    in_cr = [x for x in sv if x["cr"]]
    os_cr = [(*x["os"], int(x["hsct"])) for x in in_cr]  # type: ignore[misc]
    survivors = sorted(x["os"][0] for x in sv if not x["os"][1])  # type: ignore[index]
    return {
        "os_logrank_hsct_vs_none_among_cr": {"n": len(in_cr), "events": sum(t[1] for t in os_cr), **logrank(os_cr)},
        "os_logrank_relapsed_vs_refractory": {"n": len(sv), "events": sum(x["os"][1] for x in sv),  # type: ignore[index]
                                              **logrank([(*x["os"], int(x["relapsed"])) for x in sv])},  # type: ignore[misc]
        "os_cox_not_in_cr": {"n": len(sv), **cox([(*x["os"], int(not x["cr"])) for x in sv])},  # type: ignore[misc]
        "rfs_cox_not_in_cr": {"n": len(sv), **cox([(*x["rfs"], int(not x["cr"])) for x in sv])},  # type: ignore[misc]
        "follow_up_reverse_km_median_days": reverse_km_median([x["os"] for x in sv]),  # type: ignore[misc]
        "follow_up_survivors_median_days": median(survivors),
    }


PATIENT_HEADERS = ["住院号 (MRN)", "姓名 (Name)", "性别 (Sex)", "年龄(岁) (Age, years)", "疾病状态 (Disease status)",
                   "既往治疗线数 (Prior lines)", "融合基因 (Fusion gene)", "骨髓原始细胞% (Marrow blasts %)",
                   "贝林妥欧单抗开始 (Blinatumomab start)", "贝林妥欧单抗结束 (Blinatumomab end)", "治疗前MRD% (MRD before %)",
                   "治疗后MRD% (MRD after %)", "疗效 (Response)", "后续治疗 (Subsequent therapy)", "治疗目的 (Intent)",
                   "复发/进展 (Relapse/progression)", "复发/进展时间(月) (Months to relapse)", "生存状态 (Vital status)",
                   "随访时间(月) (Follow-up, months)", "死亡原因 (Cause of death)"]
GRAFT_HEADERS = ["住院号 (MRN)", "移植次数 (Graft no.)", "移植日期 (HSCT date)", "供者 (Donor)", "HLA配型 (HLA match)",
                 "干细胞来源 (Stem-cell source)", "预处理方案 (Conditioning)", "中性粒细胞植入(天) (ANC engraftment day)",
                 "血小板植入(天) (PLT engraftment day)", "植入失败 (Graft failure)"]
EVENT_HEADERS = ["住院号 (MRN)", "不良事件 (CTCAE v5.0 term)", "分级 (Grade)", "发生日期 (Onset)", "与贝林妥欧单抗相关 (Related)"]


def main() -> None:
    import openpyxl

    if sys.argv[1:] == ["--plan-figures"]:  # the "Analysis plan" block only; the workbook is not written
        sys.stdout.write(json.dumps(plan_figures(), indent=2) + "\n")
        return
    patients, grafts, events, figures = build()
    wb = openpyxl.Workbook()
    sheets = [("患者 Patients", PATIENT_HEADERS, patients), ("移植 HSCT", GRAFT_HEADERS, grafts),
              ("不良事件 AE", EVENT_HEADERS, events)]
    wb.remove(wb.active)
    for title, headers, rows in sheets:
        ws = wb.create_sheet(title)
        ws.append(headers)
        for row in rows:
            ws.append(row)
        for cell in ws[1]:
            cell.font = openpyxl.styles.Font(bold=True)
        for col in ws.iter_cols(min_row=2):
            for cell in col:
                if isinstance(cell.value, datetime):
                    cell.number_format = "yyyy-mm-dd"
    wb.properties.creator = "pedall-fhir examples"
    wb.properties.created = wb.properties.modified = datetime(2023, 7, 3, 9, 0)
    wb.save(OUT)
    sys.stdout.write(json.dumps(figures, ensure_ascii=False, indent=2) + "\n")


if __name__ == "__main__":
    main()
