"""Figures recomputed from the SQL on FHIR views alone (issue 19): what a study team gets from our
ViewDefinitions (``views/*.json``) over a Bulk export, with no adapter code but these few counts.

The views read standard elements and the project's published CodeSystems and extensions only
(``views/README.md``); this module aggregates their rows into the facade's headline counts, per
site and pooled, and :func:`compare` lists every count that differs from ``/outcomes``. Pure
functions: the caller reads the export (``adapter verify-figures``, tests).

Rules, the same as the facade's (``adapter/outcomes``, README "rules the figures follow"):

- cohort: patients with a blinatumomab MedicationAdministration (RxNorm 1597258) not
  ``entered-in-error``/``not-done``, counted in the site of their Patient (the id of its
  ``managingOrganization``)
  (``managingOrganization``);
- deaths: ``Patient.deceasedDateTime`` present or ``deceasedBoolean`` true;
- CRS: an AdverseEvent with project term ``crs``; grade from the ``ae-grade`` extension (worst
  per patient; an ungraded CRS counts as grade 0 for "any" and not for "grade 3+");
- HSCT: patients with a ``completed`` HSCT Procedure (SNOMED CT 234336002);
- response: each patient's latest response Observation by ``effectiveDateTime`` (then id),
  recorded or derived, not ``entered-in-error``/``cancelled``; patients without one are
  ``not-assessed``;
- MRD-negative after blinatumomab: the last post-cycle MRD result (the highest cycle, then the
  latest date; a result's cycle is that of the infusion in ``partOf``, else its own
  ``treatment-cycle``) has interpretation ``NEG``; without a post-cycle result, the response is
  ``cr-mrd-negative`` or ``mrd-clearance`` (seed 002 definitions).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapter.views.runner import CompiledView

#: The views the figures read, by name (files ``views/<name>.json``)
VIEWS = ("pedall_patient", "pedall_blinatumomab_infusion", "pedall_adverse_event", "pedall_hsct", "pedall_response",
         "pedall_mrd")
_GONE = ("entered-in-error", "not-done", "cancelled")


def load_views(folder: Path) -> dict[str, CompiledView]:
    """Every ``*.json`` ViewDefinition of ``folder``, compiled, by ``name``. Raises
    ViewDefinitionError naming the file for an invalid view."""
    from adapter.views.runner import ViewDefinitionError

    out = {}
    for path in sorted(folder.glob("*.json")):
        try:
            view = json.loads(path.read_text(encoding="utf-8"))
            out[view.get("name") or path.stem] = CompiledView(view)
        except (ValueError, ViewDefinitionError) as exc:
            raise ViewDefinitionError(f"{path.name}: {exc}") from None
    return out


def run_views(views: Mapping[str, CompiledView], resources: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of every view over ``resources`` (one pass; each view takes its resource type)."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in views}
    by_type: dict[str, list[str]] = defaultdict(list)
    for name, v in views.items():
        by_type[str(v.resource)].append(name)
    for r in resources:
        for name in by_type.get(str(r.get("resourceType")), ()):
            rows[name].extend(views[name].rows([r]))
    return rows


def _counts(patients: set[str], pat: Mapping[str, dict[str, Any]], rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    crs: dict[str, int] = {}
    for r in rows["pedall_adverse_event"]:
        if r["patient_key"] in patients and r["term"] == "crs":
            crs[r["patient_key"]] = max(crs.get(r["patient_key"], 0), r["grade"] or 0)
    latest: dict[str, tuple[str, str, str]] = {}
    for r in rows["pedall_response"]:
        if r["patient_key"] in patients and r["status"] not in _GONE and r["response"]:
            key = (r["effective"] or "", r["id"], r["response"])
            latest[r["patient_key"]] = max(latest.get(r["patient_key"], key), key)
    cycle_of = {r["id"]: r["cycle"] for r in rows["pedall_blinatumomab_infusion"]}
    last_mrd: dict[str, tuple[int, str, float, str, str]] = {}
    for r in rows["pedall_mrd"]:
        if r["patient_key"] not in patients or r["status"] in _GONE:
            continue
        cycle = cycle_of.get(r["part_of"]) if r["part_of"] else None
        if cycle is None:
            cycle = r["cycle"]
        if cycle is None:
            continue  # before blinatumomab
        key = (cycle, r["effective"] or "", -1.0 if r["value_percent"] is None else float(r["value_percent"]),
               r["comparator"] or "", r["interpretation"] or "IND")
        last_mrd[r["patient_key"]] = max(last_mrd.get(r["patient_key"], key), key)
    negative_after = sum(1 for k in patients if (last_mrd[k][4] == "NEG" if k in last_mrd else
                                                 (latest.get(k, ("", "", ""))[2] in ("cr-mrd-negative", "mrd-clearance"))))
    responses = Counter(v[2] for v in latest.values())
    responses["not-assessed"] = len(patients) - len(latest)
    return {
        "n": len(patients),
        "deaths": sum(1 for k in patients if pat[k]["deceased_boolean"] is True or pat[k]["deceased_date_time"]),
        "crs_any": len(crs),
        "crs_grade_3_plus": sum(g >= 3 for g in crs.values()),
        "hsct": len({r["patient_key"] for r in rows["pedall_hsct"] if r["patient_key"] in patients and r["status"] == "completed"}),
        "response": dict(sorted((k, v) for k, v in responses.items() if v)),
        "mrd_negative_after": negative_after,
    }


def figures_from_views(rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``{"sites": {site: counts}, "pooled": counts}`` from the rows of :data:`VIEWS` (see the module
    docstring for the rules). Counts: ``n``, ``deaths``, ``crs_any``, ``crs_grade_3_plus``, ``hsct``,
    ``response`` (code -> patients). Raises KeyError when a view in :data:`VIEWS` is missing."""
    pat = {r["patient_key"]: r for r in rows["pedall_patient"]}
    cohort: dict[str, set[str]] = defaultdict(set)
    for r in rows["pedall_blinatumomab_infusion"]:
        if r["status"] not in _GONE and r["patient_key"] in pat:
            cohort[str(pat[r["patient_key"]]["organization_key"]).split("/")[-1]].add(r["patient_key"])
    every = set().union(*cohort.values()) if cohort else set()
    return {"sites": {site: _counts(keys, pat, rows) for site, keys in sorted(cohort.items())},
            "pooled": _counts(every, pat, rows)}


def facade_counts(figures: Mapping[str, Any]) -> dict[str, Any]:
    """The same counts read from one ``/outcomes`` figures object (a site's or the pooled one)."""
    responses = {k: v for k, v in figures["response"]["counts"].items() if v}
    return {"n": figures["n"], "deaths": figures["deaths"]["count"], "crs_any": figures["toxicity"]["crs_any"]["count"],
            "crs_grade_3_plus": figures["toxicity"]["crs_grade_3_plus"]["count"], "hsct": figures["hsct"]["count"],
            "response": dict(sorted(responses.items())), "mrd_negative_after": figures["response"]["mrd_negative_after"]["count"]}


def compare(from_views: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    """Every count that differs between :func:`figures_from_views` and an ``/outcomes`` report
    (``suppress=false``), as ``"<site>: <figure>: views <a>, facade <b>"``; empty when all agree.
    A site in only one of them is a difference too."""
    out = []
    ours = {**from_views["sites"], "pooled": from_views["pooled"]}
    theirs = {**{s: facade_counts(f) for s, f in report["sites"].items()}, "pooled": facade_counts(report["pooled"])}
    for site in sorted(set(ours) | set(theirs)):
        a, b = ours.get(site), theirs.get(site)
        if a is None or b is None:
            out.append(f"{site}: only in the {'facade' if a is None else 'views'}")
            continue
        for key in a:
            if a[key] != b[key]:
                out.append(f"{site}: {key}: views {a[key]}, facade {b[key]}")
    return out
