"""Measures and MeasureReports (FHIR R4 §Measure, §MeasureReport, operation ``$evaluate-measure``)
defined by an analysis plan (issue 19): pure functions.

Each of our Measures (``profiles/Measure-*.json``) names the Library of the plan that defines it
(``profiles/Library-pedall-default-plan.json``: plans/default.yaml and the SQL on FHIR views it
reads). Each group's ``code.text`` is a figure id of that plan, and each population's criteria
carry the plan's own SQL (``language: application/sql``, RFC 6922). That SQL is what the plan runs
over the view tables:

- initial population: the plan's cohort (adapter/analysis/plan.py ``COHORT_SQL``);
- denominator: the figure's ``among`` (all of the initial population when it has none);
- numerator: the figure's ``where``.

Every criterion's ``reference`` points at the figure in the plan. :func:`measure_groups` builds
the populations from the plan, and a test checks that the published files equal them.
MeasureReports are the plan's results: :func:`measure_report` takes ``run_plan``'s output. The
pooled figure is the group score, and each site is a stratum of the ``site`` stratifier. A
proportion's score is its rate, with the Wilson 95 % interval in the ``measure-score-ci``
extension. A Kaplan–Meier figure's score is the survival at the plan's time point.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapter.config import CANONICAL

POP = "http://terminology.hl7.org/CodeSystem/measure-population"
CI_EXT = f"{CANONICAL}/StructureDefinition/measure-score-ci"
#: the canonical URL of plans/default.yaml as a FHIR Library
LIBRARY = f"{CANONICAL}/Library/pedall-default-plan"
PLAN_URL = f"{CANONICAL}/plans/default.yaml"
SQL = "application/sql"


@lru_cache
def load_measures(folder: str) -> dict[str, dict[str, Any]]:
    """Measure resources by id, from ``profiles/Measure-*.json``."""
    out = {}
    for f in sorted(Path(folder).glob("Measure-*.json")):
        m = json.loads(f.read_text(encoding="utf-8"))
        out[m["id"]] = m
    return out


def _criteria(description: str, expression: str, anchor: str) -> dict[str, Any]:
    return {"language": SQL, "description": description, "expression": " ".join(expression.split()),
            "reference": f"{PLAN_URL}#{anchor}"}


def measure_groups(plan: dict[str, Any], measure: dict[str, Any]) -> list[dict[str, Any]]:
    """``measure``'s groups with their populations and stratifier rebuilt from ``plan`` (each
    group's ``code.text`` is a figure id of the plan): a proportion gives initial population,
    denominator and numerator; a Kaplan–Meier figure its initial population, the patients whose
    time is known (origin, event, censoring). Raises KeyError for a figure the plan lacks."""
    from adapter.analysis.plan import COHORT_SQL

    figures = {f["id"]: f for f in plan["figures"]}
    cohort = _criteria("patients given blinatumomab (an infusion not entered-in-error or not-done), in the site of "
                       "their Patient", COHORT_SQL, "cohort")
    out = []
    for g in measure["group"]:
        f = figures[g["code"]["text"]]
        pops = [{"code": {"coding": [{"system": POP, "code": "initial-population"}]}, "criteria": cohort}]
        if f["type"] == "proportion":
            pops.append({"code": {"coding": [{"system": POP, "code": "denominator"}]},
                         "criteria": _criteria(f"patients assessable for: {f['label']}", f.get("among") or "true", f["id"])})
            pops.append({"code": {"coding": [{"system": POP, "code": "numerator"}]},
                         "criteria": _criteria(f"patients with: {f['label']}", f["where"], f["id"])})
        elif f["type"] == "km":
            pops.append({"code": {"coding": [{"system": POP, "code": "measure-population"}]},
                         "criteria": _criteria(f"{f['label']}: time from origin to event, else censored at the end of "
                                               "follow-up (patients whose time is unknown are left out and counted)",
                                               f"origin: {f['origin']}; event: {f['event']}; censor: {f['censor']}", f["id"])})
        else:
            raise KeyError(f"{f['id']}: a {f['type']} figure is not a Measure group")
        out.append({**{k: v for k, v in g.items() if k not in ("population", "stratifier")}, "population": pops,
                    "stratifier": [{"code": {"text": "site"},
                                    "criteria": _criteria("the site of the Patient (the id of its managingOrganization)",
                                                          "site", "cohort")}]})
    return out


def _pop(code: str, count: Any, small: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": {"coding": [{"system": POP, "code": code}]}}
    if not (small and isinstance(count, int) and 0 < count < small):
        out["count"] = count
    return out


def _scored(fig: dict[str, Any], cohort_n: int, small: int | None) -> dict[str, Any]:
    """Populations, score and CI of one plan figure (a proportion or a Kaplan–Meier estimate).
    With ``small`` (the small-cell threshold) a count from 1 to small - 1 is left out, and so are
    the score and interval computed from it."""
    out: dict[str, Any] = {}
    if "at" in fig:  # Kaplan-Meier at the plan's time point
        out["population"] = [_pop("initial-population", cohort_n, small), _pop("measure-population", fig["n"], small)]
        at = next(iter(fig["at"].values()), None) if fig["at"] else None
        score, ci = (at["survival"], at["ci95"]) if at else (None, None)
    else:
        out["population"] = [_pop("initial-population", cohort_n, small), _pop("denominator", fig["n"], small),
                             _pop("numerator", fig["count"], small)]
        score, ci = fig.get("rate"), fig.get("ci95")
    if any("count" not in p for p in out["population"][1:]):
        return out
    if score is not None:
        out["measureScore"] = {"value": score}
    if ci:
        out["extension"] = [{"url": CI_EXT, "valueRange": {"low": {"value": ci[0]}, "high": {"value": ci[1]}}}]
    return out


def measure_report(measure: dict[str, Any], result: dict[str, Any], period: tuple[str, str], created: str,
                   small: int | None = None) -> dict[str, Any]:
    """A summary MeasureReport (R4) of ``measure`` from a plan's ``result`` (adapter/analysis/plan.py
    ``run_plan``, unsuppressed; its figure ``n`` is the initial population). ``small``: the
    small-cell threshold for outputs that leave a site (see :func:`_scored`). Raises KeyError for a
    group whose figure the result lacks."""
    groups = []
    for g in measure["group"]:
        fid = g["code"]["text"]
        pooled = result["pooled"]
        group = {"id": g["id"], "code": {"text": g.get("description", fid)},
                 **_scored(pooled[fid], pooled["n"]["count"], small)}
        strata = [{"value": {"text": site}, **_scored(figures[fid], figures["n"]["count"], small)}
                  for site, figures in result["sites"].items()]
        group["stratifier"] = [{"code": [{"text": "site"}], "stratum": strata}]
        groups.append(group)
    return {"resourceType": "MeasureReport", "status": "complete", "type": "summary",
            "measure": measure["url"], "date": created,
            "period": {"start": period[0], "end": period[1]},
            "improvementNotation": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
                                                "code": "increase"}]},
            "group": groups}
