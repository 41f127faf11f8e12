"""A plan's figures against the facade's (``adapter verify-figures``): pure functions.

A figure of a plan that names ``outcomes`` (a dotted path into one ``/outcomes`` figures object,
e.g. ``toxicity.crs_any``) is compared with the facade's value there, per site and pooled:

- ``count``: the count (the facade's number, or its ``count`` when it reports an object);
- ``proportion``: ``count``, ``n``, ``rate`` and ``ci95`` (both Wilson, adapter/outcomes/stats.py);
- ``table`` (one dimension): every non-zero cell (the facade lists zeros, the plan does not);
- ``km``: n, events, the number left out, and the survival with its 95 % interval at the plan's
  first ``at_days``, which must be the facade's time point (``/outcomes?timepoint=`` months x
  30.4375; 36 months = 1095.75 days by default);
- ``followup``: the reverse Kaplan-Meier median, in months (days / 30.4375) as the facade gives it.

Figures without ``outcomes`` are the plan's own (the facade does not compute them): they are
recomputed, not compared. Plans: plans/default.yaml is the facade's, plans/*.yaml a paper's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adapter.analysis.plan import PlanError
from adapter.outcomes.stats import DAYS_PER_MONTH

#: The facade's figures as a plan
DEFAULT_PLAN = Path(__file__).resolve().parents[2] / "plans" / "default.yaml"

_PROPORTION = ("count", "n", "rate", "ci95")


def facade_value(figures: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` of one ``/outcomes`` figures object; None when absent."""
    node: Any = figures
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def comparable(kind: str, value: Any, *, facade: bool) -> Any:
    """What is compared of a figure of type ``kind``: a count, the proportion's four numbers, or a
    table's non-zero cells as a dict (see the module docstring). ``facade``: ``value`` is the
    facade's (an /outcomes value), else the plan's result."""
    if value is None:
        return None
    if kind == "count":
        return value.get("count") if isinstance(value, Mapping) else value
    if kind == "proportion":
        return {k: value.get(k) for k in _PROPORTION} if isinstance(value, Mapping) else value
    if kind == "km":  # at the plan's first time point, which must be the facade's (/outcomes?timepoint=)
        if facade:
            out = {k: value.get(k) for k in ("n", "events", "survival", "ci95")}
        else:
            at = next(iter(value["at"].values()), {}) if value.get("at") else {}
            out = {"n": value["n"], "events": value["events"], "survival": at.get("survival"), "ci95": at.get("ci95")}
        return {**out, "excluded": sum((value.get("excluded") or {}).values())}
    if kind == "followup":  # the facade reports months (days / 30.4375, 2 decimals)
        if facade:
            return value
        return None if value.get("median_days") is None else round(value["median_days"] / DAYS_PER_MONTH, 2)
    if kind == "table":
        if facade:
            return {str(k): v for k, v in value.items() if v} if isinstance(value, Mapping) else value
        if len(value["dimensions"]) != 1:
            raise ValueError("a two-way table is not compared with the facade")
        return {str(c[0]): c[-1] for c in value["cells"] if c[-1]}
    raise ValueError(f"figures of type {kind} are not compared with the facade")  # the plan's own analyses


def compare_with_outcomes(plan: Mapping[str, Any], result: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    """Every figure of ``plan`` with ``outcomes`` whose value in ``result`` (adapter/analysis/plan.py
    ``run_plan``, unsuppressed) differs from ``report`` (``GET /outcomes?suppress=false``), as
    ``"<site>: <figure id>: plan <a>, facade <b>"``; a site in only one of them is a difference
    too (a plan restricted to some sites is compared on those sites only). Empty when all agree.
    Raises PlanError for a figure that cannot be compared (a two-way table, a survival figure)."""
    out = []
    ours = {**result["sites"], "pooled": result["pooled"]}
    theirs = {**report["sites"], "pooled": report["pooled"]}
    if plan.get("cohort", {}).get("sites"):  # a plan of some sites: their pooled figures are not the facade's
        keep = set(plan["cohort"]["sites"])
        ours = {s: v for s, v in ours.items() if s in keep}
        theirs = {s: v for s, v in theirs.items() if s in keep}
    checked = [f for f in plan["figures"] if f.get("outcomes")]
    for site in sorted(set(ours) | set(theirs)):
        a, b = ours.get(site), theirs.get(site)
        if a is None or b is None:
            out.append(f"{site}: only in the {'facade' if a is None else 'plan'}")
            continue
        for f in checked:
            try:
                mine = comparable(f["type"], a[f["id"]], facade=False)
            except ValueError as exc:
                raise PlanError(f"figure {f['id']}: {exc}") from None
            other = comparable(f["type"], facade_value(b, f["outcomes"]), facade=True)
            if mine != other:
                out.append(f"{site}: {f['id']}: plan {mine}, facade {other}")
    return out


def verify_rows(rows: Mapping[str, list[dict[str, Any]]], report: Mapping[str, Any],
                plan_path: Path = DEFAULT_PLAN) -> tuple[dict[str, Any], list[str]]:
    """Run the plan in ``plan_path`` (default: the facade's, plans/default.yaml) over view rows
    from any engine and compare it with ``report`` (``/outcomes?suppress=false``): ``(plan
    result, differences)``. Raises PlanError (a bad plan or SQL)."""
    from adapter.analysis.plan import load_plan, run_plan

    plan = load_plan(plan_path)
    result = run_plan(plan, rows)
    return result, compare_with_outcomes(plan, result, report)
