"""MeasureReports (FHIR R4 §Measure / §MeasureReport, operation ``$evaluate-measure``) carrying the
figures of :func:`adapter.outcomes.report.outcomes_report`: the pooled figure as the group score and
each site as a stratum of the ``site`` stratifier. Measures are defined in ``profiles/Measure-*.json``;
each group's ``code.text`` is the path of its figure in the report. Pure functions."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from adapter.config import CANONICAL

POP = "http://terminology.hl7.org/CodeSystem/measure-population"
CI_EXT = f"{CANONICAL}/StructureDefinition/measure-score-ci"


@lru_cache
def load_measures(folder: str) -> dict[str, dict[str, Any]]:
    """Measure resources by id, from ``profiles/Measure-*.json``."""
    out = {}
    for f in sorted(Path(folder).glob("Measure-*.json")):
        m = json.loads(f.read_text(encoding="utf-8"))
        out[m["id"]] = m
    return out


def _figure(figures: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = figures
    for part in path.split("."):
        node = node[part]
    return node


def _pop(code: str, count: int) -> dict[str, Any]:
    return {"code": {"coding": [{"system": POP, "code": code}]}, "count": count}


def _scored(fig: dict[str, Any], n_patients: int) -> dict[str, Any]:
    """Populations, score and CI of one figure (a proportion or a KM estimate)."""
    out: dict[str, Any] = {}
    if "survival" in fig:  # Kaplan-Meier at the time point
        out["population"] = [_pop("initial-population", fig["n"])]
        score = fig["survival"]
    else:
        out["population"] = [_pop("initial-population", n_patients), _pop("denominator", fig["n"]),
                             _pop("numerator", fig["count"])]
        score = fig["rate"]
    if score is not None:
        out["measureScore"] = {"value": score}
    if fig.get("ci95"):
        lo, hi = fig["ci95"]
        out["extension"] = [{"url": CI_EXT, "valueRange": {"low": {"value": lo}, "high": {"value": hi}}}]
    return out


def measure_report(measure: dict[str, Any], report: dict[str, Any], period: tuple[str, str], created: str) -> dict[str, Any]:
    """A summary MeasureReport of ``measure`` from an outcomes ``report`` (R4 MeasureReport)."""
    groups = []
    for g in measure["group"]:
        path = g["code"]["text"]
        pooled = _figure(report["pooled"], path)
        group = {"id": g["id"], "code": {"text": g.get("description", path)}, **_scored(pooled, report["pooled"]["n"])}
        strata = []
        for site, figures in report["sites"].items():
            strata.append({"value": {"text": site}, **_scored(_figure(figures, path), figures["n"])})
        group["stratifier"] = [{"code": [{"text": "site"}], "stratum": strata}]
        groups.append(group)
    return {"resourceType": "MeasureReport", "status": "complete", "type": "summary",
            "measure": measure["url"], "date": created,
            "period": {"start": period[0], "end": period[1]},
            "improvementNotation": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-improvement-notation",
                                                "code": "increase"}]},
            "group": groups}
