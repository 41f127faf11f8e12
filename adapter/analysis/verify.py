"""A plan's figures against the facade's (``adapter verify-figures``): pure functions.

A figure of a plan that names ``outcomes`` (a dotted path into one ``/outcomes`` figures object,
e.g. ``toxicity.crs_any``) is compared with the facade's value there, per site and pooled:

- ``count``: the count (the facade's number, or its ``count`` when it reports an object);
- ``proportion``: ``count``, ``n``, ``rate`` and ``ci95`` (both Wilson, adapter/outcomes/stats.py);
- ``table``: every non-zero cell (the facade lists zeros, the plan does not); a two-way table
  as ``{row: {column: count}}``, the facade's nesting (of which only the integer entries other
  than a stratum's total ``n`` are cells);
- ``summary``: the numbers the facade gives (n, mean, median, min, max, SD, and the quartiles
  ``q1``/``q3`` where it reports them, and its ``total`` as the plan's ``sum``); where the facade
  reports a single number (a total such as ``exposure.cycles_total``), the plan's ``sum``;
- ``km``: n, events, the number left out, the median survival (months), and the survival with
  its 95 % interval at the plan's
  first ``at_days``, which must be the facade's time point (``/outcomes?timepoint=`` months x
  30.4375; 36 months = 1095.75 days by default);
- ``followup``: the reverse Kaplan-Meier median, in months (days / 30.4375) as the facade gives it;
- ``heterogeneity``: the sites tested, df, chi2, p and the smallest expected count (pooled);
- ``ratio``: the quotient (e.g. ``exposure.outpatient_share``).

A figure with ``by`` may name a path with ``*`` (``response.by_status_at_start.*.cr``): its result
for each stratum is compared with the facade's figure for the stratum of the same name, and a
stratum in only one of them is a difference.

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
_SUMMARY = ("n", "mean", "median", "min", "max", "sd", "q1", "q3", "total")


def _cell(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v != 0


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
            out = {k: value.get(k) for k in ("n", "events", "survival", "ci95", "median_months")}
        else:
            at = next(iter(value["at"].values()), {}) if value.get("at") else {}
            median = value.get("median_days")
            out = {"n": value["n"], "events": value["events"], "survival": at.get("survival"), "ci95": at.get("ci95"),
                   "median_months": None if median is None else round(median / DAYS_PER_MONTH, 2)}
        return {**out, "excluded": sum((value.get("excluded") or {}).values())}
    if kind == "ratio":  # the facade gives the quotient
        return value if facade else value.get("ratio")
    if kind == "heterogeneity":  # the chi-square test across sites; no test (one site) is None
        keys = ("sites", "df", "chi2", "p", "min_expected")
        return {k: value.get(k) for k in keys} if value else None
    if kind == "followup":  # the facade reports months (days / 30.4375, 2 decimals)
        if facade:
            return value
        return None if value.get("median_days") is None else round(value["median_days"] / DAYS_PER_MONTH, 2)
    if kind == "table":
        if facade:
            if not isinstance(value, Mapping):
                return value
            # cells are the integer entries (a stratum's total ``n`` and its rates are other figures)
            return {str(k): ({str(c): n for c, n in v.items() if _cell(n) and c != "n"} if isinstance(v, Mapping) else v)
                    for k, v in value.items() if v}
        if len(value["dimensions"]) == 1:
            return {str(c[0]): c[-1] for c in value["cells"] if c[-1]}
        nested: dict[str, dict[str, int]] = {}
        for row, column, n in value["cells"]:
            if n:
                nested.setdefault(str(row), {})[str(column)] = n
        return nested
    if kind == "summary":
        if facade:
            return value if not isinstance(value, Mapping) else {k: v for k, v in value.items() if k in _SUMMARY}
        iqr, span = value.get("iqr") or [None, None], value.get("range") or [None, None]
        out = {"n": value["n"], "mean": value.get("mean"), "median": value.get("median"), "min": span[0], "max": span[1],
               "sd": value.get("sd"), "q1": iqr[0], "q3": iqr[1], "total": value.get("sum")}
        if isinstance(out["total"], float) and out["total"].is_integer():
            out["total"] = int(out["total"])
        return {k: v for k, v in out.items() if v is not None}
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
            if "*" not in f["outcomes"]:
                out.extend(f"{site}: {d}" for d in _differences(f, a[f["id"]], facade_value(b, f["outcomes"]), f["id"]))
                continue
            # a figure per stratum (by): the * of the path is each stratum of the facade and of the plan
            head, _, tail = f["outcomes"].partition(".*")
            strata = facade_value(b, head) or {}
            mine_by = a[f["id"]].get("by") or {}
            for g in sorted(set(strata) | set(mine_by)):
                if g not in mine_by or g not in strata:
                    out.append(f"{site}: {f['id']} [{g}]: only in the {'facade' if g not in mine_by else 'plan'}")
                    continue
                theirs_g = facade_value(strata[g], tail.lstrip(".")) if tail else strata[g]
                out.extend(f"{site}: {d}" for d in _differences(f, mine_by[g], theirs_g, f"{f['id']} [{g}]"))
    return out


def _differences(f: Mapping[str, Any], result: Any, facade: Any, name: str) -> list[str]:
    """``["<name>: plan <a>, facade <b>"]`` when the plan's ``result`` of figure ``f`` differs from
    the facade's value, else ``[]``."""
    try:
        mine = comparable(f["type"], result, facade=False)
    except ValueError as exc:
        raise PlanError(f"figure {f['id']}: {exc}") from None
    other = comparable(f["type"], facade, facade=True)
    if f["type"] == "summary":  # the numbers the facade reports: all of them, or the total
        mine = (result.get("sum") if not isinstance(other, Mapping) else
                {k: mine.get(k) for k in {*other, "n", "mean", "median", "min", "max"} if k in other or mine.get("n")})
        if isinstance(mine, float) and mine.is_integer():
            mine = int(mine)
    return [] if mine == other else [f"{name}: plan {mine}, facade {other}"]


def verify_rows(rows: Mapping[str, list[dict[str, Any]]], report: Mapping[str, Any],
                plan_path: Path = DEFAULT_PLAN) -> tuple[dict[str, Any], list[str]]:
    """Run the plan in ``plan_path`` (default: the facade's, plans/default.yaml) over view rows
    from any engine and compare it with ``report`` (``/outcomes?suppress=false``): ``(plan
    result, differences)``. Raises PlanError (a bad plan or SQL)."""
    from adapter.analysis.plan import load_plan, run_plan

    plan = load_plan(plan_path)
    result = run_plan(plan, rows)
    return result, compare_with_outcomes(plan, result, report)


#: What each figure type compares below its ``outcomes`` path (None: everything under it)
_COMPARED: dict[str, tuple[str, ...] | None] = {
    "count": ("count",), "proportion": _PROPORTION, "summary": _SUMMARY, "table": None,
    "km": ("n", "events", "survival", "ci95", "median_months", "excluded"), "followup": (),
    "heterogeneity": ("df", "chi2", "p", "min_expected"), "ratio": ()}


def uncompared(plan: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
    """The numbers of ``report`` (``/outcomes``: every site's and the pooled figures) that no figure
    of ``plan`` compares (see :func:`comparable`), as dotted paths, sorted, each once. For the
    default plan: the vial costs (prices come from the sites' configuration, not from FHIR) and the
    survival time point (a parameter of the request)."""
    paths = [(f["outcomes"].split("."), _COMPARED.get(f["type"], ())) for f in plan["figures"] if f.get("outcomes")]

    def leaves(node: Any, at: tuple[str, ...] = ()) -> Any:
        if isinstance(node, Mapping):
            for k, v in node.items():
                yield from leaves(v, (*at, str(k)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from leaves(v, (*at, str(i)))
        elif isinstance(node, int | float) and not isinstance(node, bool):
            yield at

    def compared(leaf: tuple[str, ...]) -> bool:
        for parts, keys in paths:
            if len(parts) > len(leaf) or not all(a in ("*", b) for a, b in zip(parts, leaf, strict=False)):
                continue
            rest = leaf[len(parts):]
            if keys is None or not rest or rest[0] in keys:
                return True
        return False

    scopes = [*report.get("sites", {}).values(), report.get("pooled", {})]
    return sorted({".".join(leaf) for scope in scopes for leaf in leaves(scope) if not compared(leaf)})

