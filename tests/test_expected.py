"""Every per-patient fact of examples/*/EXPECTED.md, checked against the stored FHIR resources
(not the spreadsheets), on SQLite and PostgreSQL."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import date
from typing import Any

import pytest

from adapter.mapping.mrd import interpretation
from adapter.mapping.transforms import MRDValue
from adapter.store import Store

CS = "https://w3id.org/pedall-fhir/CodeSystem/"
SD = "https://w3id.org/pedall-fhir/StructureDefinition/"


class Cohort:
    """The stored resources of one site, indexed by the site's own patient identifier."""

    def __init__(self, store: Store, site: str) -> None:
        self.by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in store.iter_resources(site=site):
            self.by_type[r["resourceType"]].append(r)
        self.pid = {p["identifier"][0]["value"]: p["id"] for p in self.by_type["Patient"]}
        self.patient = {p["identifier"][0]["value"]: p for p in self.by_type["Patient"]}

    def of(self, rtype: str, mrn: str, profile: str | None = None) -> list[dict[str, Any]]:
        ref = f"Patient/{self.pid[mrn]}"
        return [r for r in self.by_type[rtype] if (r.get("subject") or {}).get("reference") == ref
                and (profile is None or SD + profile in r["meta"]["profile"])]


def ext(r: dict[str, Any], name: str) -> Any:
    for e in r.get("extension", []):
        if e["url"] == SD + name:
            return next(v for k, v in e.items() if k.startswith("value"))
    return None


def code(cc: dict[str, Any], system_suffix: str) -> str:
    return next(c["code"] for c in cc["coding"] if c["system"].endswith(system_suffix))


def mrd_text(obs: dict[str, Any]) -> str:
    q = obs["valueQuantity"]
    v = q["value"]
    return f"{q.get('comparator', '')}{v:.2f}"


# ------------------------------------------------------------------------------------------------ HITO

HITO_TABLE1 = [  # Expediente, age, sex, MRD pre, after C1, C2, C3, cycles, C1 start, HSCT, death date, cause
    ("014240", 9, "male", "24.56", "0.01", "<0.01", None, 2, "2019-04-08", "2019-07-22", "2019-12-17", "pjp-pneumonia"),
    ("011890", 13, "female", "6.12", "<0.01", None, None, 1, "2019-05-20", "2019-07-17", None, None),
    ("016197", 15, "female", "18.60", "0.21", "0.01", "<0.01", 3, "2019-06-17", "2019-11-07", "2020-05-26", "pjp-pneumonia"),
    ("016353", 11, "male", "0.21", "<0.01", None, None, 1, "2019-08-05", "2019-10-03", None, None),
    ("022755", 7, "female", "6.80", "<0.01", "<0.01", "<0.01", 3, "2019-09-02", "2020-01-23", None, None),
    ("028237", 1, "female", "0.01", "0.01", None, None, 1, "2019-10-14", "2019-12-12", None, None),
    ("026997", 17, "male", "21.40", "1.85", "0.01", None, 2, "2019-11-11", "2020-02-24", "2020-04-06", "septic-shock"),
    ("014050", 10, "female", "0.37", "0.02", "0.51", "0.01", 3, "2019-12-02", "2020-04-27", "2020-05-19", "hemorrhagic-syndrome"),
    ("019284", 9, "male", "4.77", "<0.01", None, None, 1, "2020-02-10", "2020-04-14", None, None),
]


def _age(birth: str, on: str) -> int:
    b, o = date.fromisoformat(birth), date.fromisoformat(on)
    return o.year - b.year - ((o.month, o.day) < (b.month, b.day))


@pytest.mark.parametrize("row", HITO_TABLE1, ids=[r[0] for r in HITO_TABLE1])
def test_hito_table1_per_patient(loaded_store: Store, row: tuple[Any, ...]) -> None:
    mrn, age, sex, pre, c1, c2, c3, cycles, start, hsct, died, cause = row
    h = Cohort(loaded_store, "hito")
    pat = h.patient[mrn]
    assert pat["gender"] == sex
    assert _age(pat["birthDate"], start) == age
    assert "name" not in pat
    mas = h.of("MedicationAdministration", mrn)
    assert max(ext(m, "treatment-cycle") for m in mas) == cycles
    cycle1 = [m for m in mas if ext(m, "treatment-cycle") == 1]
    assert min(m["effectivePeriod"]["start"] for m in cycle1) == start
    # cycle 1: 5 then 15 ug/m2/d as two dose steps; the step-1 resource stands for the cycle
    assert sorted(m["dosage"]["rateQuantity"]["value"] for m in cycle1) == [5, 15]
    assert {m["dosage"]["rateQuantity"]["code"] for m in mas} == {"ug/m2/d"}
    mrd = h.of("Observation", mrn, "pedall-mrd")
    pre_obs = [o for o in mrd if "partOf" not in o]
    assert [mrd_text(o) for o in pre_obs] == [f"{float(pre):.2f}"]
    after = {}
    by_id = {m["id"]: m for m in mas}
    for o in mrd:
        if "partOf" in o:
            ma = by_id[o["partOf"][0]["reference"].split("/")[1]]
            after[ext(ma, "treatment-cycle")] = mrd_text(o)
    expected = {i + 1: (v if v.startswith("<") else f"{float(v):.2f}") for i, v in enumerate([c1, c2, c3]) if v}
    assert after == expected
    procs = h.of("Procedure", mrn)
    assert [p["performedDateTime"] for p in procs] == [hsct]
    if died:
        assert pat["deceasedDateTime"] == died
        deaths = [a for a in h.of("AdverseEvent", mrn) if code(a["event"], "adverse-event-term") == "death"]
        assert len(deaths) == 1 and deaths[0]["date"] == died
        assert code(ext(deaths[0], "cause-of-death"), "adverse-event-term") == cause
        assert code(deaths[0]["outcome"], "adverse-event-outcome") == "fatal"
    else:
        assert "deceasedDateTime" not in pat and pat.get("deceasedBoolean") is False


def test_hito_counts(loaded_store: Store) -> None:
    h = Cohort(loaded_store, "hito")
    assert len(h.by_type["Patient"]) == 9
    assert Counter(p["gender"] for p in h.by_type["Patient"]) == {"female": 5, "male": 4}
    cycles = {(m["subject"]["reference"], ext(m, "treatment-cycle")) for m in h.by_type["MedicationAdministration"]}
    assert len(cycles) == 17
    per_patient = Counter(Counter(p for p, _ in cycles).values())
    assert per_patient == {1: 4, 2: 2, 3: 3}
    mrd = [o for o in h.by_type["Observation"] if SD + "pedall-mrd" in o["meta"]["profile"]]
    assert len(mrd) == 26
    pre = [o for o in mrd if "partOf" not in o]
    # HITO declares 0.01 % as negative (seed 000): 8 of 9 positive before blinatumomab
    assert Counter(code(o["interpretation"][0], "ObservationInterpretation") for o in pre) == {"POS": 8, "NEG": 1}
    # after the last cycle: 6 of 9 "<0,01", 9 of 9 <= 0.01 %
    last: dict[str, tuple[int, dict[str, Any]]] = {}
    by_id = {m["id"]: m for m in h.by_type["MedicationAdministration"]}
    for o in mrd:
        if "partOf" in o:
            c = ext(by_id[o["partOf"][0]["reference"].split("/")[1]], "treatment-cycle")
            p = o["subject"]["reference"]
            if c > last.get(p, (0, {}))[0]:
                last[p] = (c, o)
    assert sum(o["valueQuantity"].get("comparator") == "<" for _, o in last.values()) == 6
    assert sum(code(o["interpretation"][0], "ObservationInterpretation") == "NEG" for _, o in last.values()) == 9
    # the other reading (0.01 % positive) is the same data through interpretation(): 6 of 9
    strict_neg = sum(interpretation(MRDValue(__import__("decimal").Decimal(str(o["valueQuantity"]["value"])),
                                             o["valueQuantity"].get("comparator")), 0.01, False) == "NEG"
                     for _, o in last.values())
    assert strict_neg == 6
    crs = [a for a in h.by_type["AdverseEvent"] if code(a["event"], "adverse-event-term") == "crs"]
    assert sorted(ext(a, "ae-grade") for a in crs) == [1, 2, 2]
    assert all("suspectEntity" in a for a in crs)
    picu = [e for e in h.by_type["Encounter"] if e["type"][0]["coding"][0]["code"] == "picu-admission"]
    assert len(picu) == 2
    deaths = [a for a in h.by_type["AdverseEvent"] if code(a["event"], "adverse-event-term") == "death"]
    assert len(deaths) == 4 and not any("suspectEntity" in a for a in deaths)
    assert Counter(code(ext(a, "cause-of-death"), "adverse-event-term") for a in deaths) == {
        "pjp-pneumonia": 2, "septic-shock": 1, "hemorrhagic-syndrome": 1}
    assert len(h.by_type["Procedure"]) == 9
    hla = Counter(code(ext(p, "hsct-hla-match"), "hla-match") for p in h.by_type["Procedure"])
    assert hla == {"haploidentical": 7, "identical": 2}
    assert Counter(p["usedCode"][0]["coding"][0]["code"] for p in h.by_type["Procedure"]) == {"pbsc": 8, "bone-marrow": 1}
    status = Counter(code(o["valueCodeableConcept"], "disease-status") for o in h.by_type["Observation"]
                     if SD + "pedall-disease-status" in o["meta"]["profile"])
    assert status == {"relapse": 5, "refractory": 4}
    settings = Counter(m["category"]["coding"][0]["code"] for m in h.by_type["MedicationAdministration"]
                       if ext(m, "treatment-cycle") and "partOf" not in m)
    assert settings == {"outpatient": 15, "inpatient": 2}


# ----------------------------------------------------------------------------------------------- HUANL

HUANL_ROWS = [  # Registro, sex, age text, start, days, HSCT, relapse/PD, death, last contact, response, status, pre MRD
    ("2002200", "male", "7 months", "2021-06-14", 20, "2021-08-02", "2022-06-28", "2022-08-17", "2022-08-17", "cr-mrd-negative", "refractory", 4.4),
    ("1713992", "male", "12 years", "2021-03-08", 19, "2021-04-26", None, None, "2025-06-09", "cr-mrd-negative", "refractory", 4.18),
    ("2284242", "male", "11 months", "2022-02-07", 20, "2022-03-28", None, None, "2025-06-16", "cr-mrd-negative", "relapse-1", 3.2),
    ("1714217", "female", "5 years", "2021-10-18", 15, "2021-12-06", None, "2022-04-01", "2022-04-01", "cr-mrd-negative", "relapse-2", 2.5),
    ("2140912", "male", "9 months", "2022-05-09", 13, None, "2022-05-21", "2022-08-05", "2022-08-05", "pd", "relapse-1", 4.5),
    ("1567518", "female", "4 years", "2022-09-12", 11, None, "2022-09-22", None, "2025-06-13", "pd", "relapse-1", 3.65),
    ("1791864", "male", "15 years", "2020-01-20", 20, "2020-03-09", None, None, "2025-06-23", "cr-mrd-negative", "refractory", 1.8),
    ("2009649", "male", "7 years", "2023-03-13", 19, "2023-06-05", None, "2023-06-20", "2023-06-20", "pr", "relapse-2", 1.6),
    ("1684965", "female", "3 years", "2023-08-14", 21, "2023-10-02", None, "2023-11-12", "2023-11-12", "mrd-clearance", "relapse-1", 0.14),
    ("2223802", "male", "2 years", "2024-08-26", 21, "2024-10-14", None, None, "2025-06-29", "mrd-clearance", "relapse-1", 0.13),
    ("2028975", "female", "6 years", "2024-08-05", 20, "2024-09-23", None, None, "2025-06-30", "mrd-clearance", "relapse-1", 0.06),
    ("2184134", "male", "5 years", "2024-08-05", 21, "2024-09-30", None, None, "2025-06-27", "mrd-clearance", "relapse-1", 0.02),
]
HUANL_DEATH_DAYS = {"2002200": (380, "relapse"), "1714217": (116, "pneumonia"), "2009649": (15, "sepsis"),
                    "1684965": (41, "thrombosis")}


@pytest.mark.parametrize("row", HUANL_ROWS, ids=[r[0] for r in HUANL_ROWS])
def test_huanl_table3_per_patient(loaded_store: Store, row: tuple[Any, ...]) -> None:
    mrn, sex, age, start, days, hsct, rel, died, last, response, status, pre = row
    h = Cohort(loaded_store, "huanl")
    pat = h.patient[mrn]
    assert pat["gender"] == sex
    n, unit = age.split()
    got = _age(pat["birthDate"], start) if unit.startswith("year") else (
        (date.fromisoformat(start) - date.fromisoformat(pat["birthDate"])).days // 30.4375)
    assert got == int(n)
    (ma,) = h.of("MedicationAdministration", mrn)
    p = ma["effectivePeriod"]
    assert p["start"] == start
    assert (date.fromisoformat(p["end"]) - date.fromisoformat(p["start"])).days + 1 == days
    assert ma["status"] == ("stopped" if response == "pd" else "completed")
    (resp,) = h.of("Observation", mrn, "pedall-response")
    assert code(resp["valueCodeableConcept"], "blinatumomab-response") == response
    statuses = h.of("Observation", mrn, "pedall-disease-status")
    at_start = [o for o in statuses if code(o["category"][0], "assessment-timepoint") == "pre-treatment"]
    assert [code(o["valueCodeableConcept"], "disease-status") for o in at_start] == [status]
    pre_mrd = [o for o in h.of("Observation", mrn, "pedall-mrd") if "partOf" not in o]
    assert [o["valueQuantity"]["value"] for o in pre_mrd] == [pre]
    assert [p["performedDateTime"] for p in h.of("Procedure", mrn)] == ([hsct] if hsct else [])
    later = [o for o in statuses if code(o["category"][0], "assessment-timepoint") == "follow-up"]
    assert [o["effectiveDateTime"] for o in later] == ([rel] if rel else [])
    if rel:
        assert code(later[0]["valueCodeableConcept"], "disease-status") == ("progression" if response == "pd" else "relapse")
    (fu,) = h.of("Observation", mrn, "pedall-vital-status")
    assert fu["effectiveDateTime"] == last
    assert code(fu["valueCodeableConcept"], "vital-status") == ("dead" if died else "alive")
    deaths = [a for a in h.of("AdverseEvent", mrn) if code(a["event"], "adverse-event-term") == "death"]
    if died:
        assert pat["deceasedDateTime"] == died
        assert [d["date"] for d in deaths] == [died]
        if mrn in HUANL_DEATH_DAYS:
            days_after, cause = HUANL_DEATH_DAYS[mrn]
            assert (date.fromisoformat(deaths[0]["date"]) - date.fromisoformat(hsct)).days == days_after
            assert code(ext(deaths[0], "cause-of-death"), "adverse-event-term") == cause
    else:
        assert deaths == [] and pat["deceasedBoolean"] is False


def test_huanl_counts(loaded_store: Store) -> None:
    h = Cohort(loaded_store, "huanl")
    assert Counter(p["gender"] for p in h.by_type["Patient"]) == {"male": 8, "female": 4}
    infants = [mrn for mrn, *_ in HUANL_ROWS if _age(h.patient[mrn]["birthDate"], _[2]) < 1]
    assert len(infants) == 3
    setting = Counter(m["category"]["coding"][0]["code"] for m in h.by_type["MedicationAdministration"])
    assert setting == {"outpatient": 9, "inpatient": 3}
    responses = Counter(code(o["valueCodeableConcept"], "blinatumomab-response") for o in h.by_type["Observation"]
                        if SD + "pedall-response" in o["meta"]["profile"])
    assert responses == {"cr-mrd-negative": 5, "mrd-clearance": 4, "pr": 1, "pd": 2}
    pre = [o for o in h.by_type["Observation"] if SD + "pedall-mrd" in o["meta"]["profile"] and "partOf" not in o]
    assert sum(o["valueQuantity"]["value"] > 1 for o in pre) == 8
    assert all(code(o["interpretation"][0], "ObservationInterpretation") == "POS" for o in pre)
    assert len(h.by_type["Procedure"]) == 10
    crs = [a for a in h.by_type["AdverseEvent"] if code(a["event"], "adverse-event-term") == "crs"]
    assert sorted(ext(a, "ae-grade") for a in crs) == [1, 1, 1, 2]
    assert {code(ext(a, "ae-grading-system"), "grading-system") for a in crs} == {"ctcae-v5"}
    neut = [a for a in h.by_type["AdverseEvent"] if code(a["event"], "adverse-event-term") == "neutropenia"]
    assert len(neut) == 3
    deaths = [a for a in h.by_type["AdverseEvent"] if code(a["event"], "adverse-event-term") == "death"]
    assert len(deaths) == 5
    lines = [o["component"][0]["valueInteger"] for o in h.by_type["Observation"] if "component" in o]
    assert sorted(lines) == sorted([3, 3, 2, 2, 3, 3, 2, 3, 2, 2, 4, 2])
