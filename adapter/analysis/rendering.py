"""``/outcomes`` as a rendering of the default plan (issue 19): pure functions.

:func:`render_outcomes` writes every figure of a plan that names an ``outcomes`` path into an
``/outcomes`` report, in the shape the report has there: the served numbers are the plan's, computed
over the SQL on FHIR views of the stored resources (adapter/analysis/store_plan.py). What no figure
covers stays the facade's (adapter/outcomes/report.py): the vial costs (prices come from the sites'
configuration, not from FHIR), the definitions, the time point, survival strata asked for with
``stratify``, and the reasons a survival figure gives for the patients it leaves out (their number
is the plan's). It is the inverse of adapter/analysis/verify.py ``comparable``: rendering a plan's
result into a report that verify finds equal changes nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from adapter.analysis.verify import _SUMMARY, comparable


def render_outcomes(plan: Mapping[str, Any], result: Mapping[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``report`` (``/outcomes``: ``sites`` and ``pooled`` figures) with the value of
    every figure of ``plan`` that names ``outcomes`` taken from ``result`` (run_plan's output over
    the same patients, unsuppressed), per site and pooled; a figure with ``by`` and a ``*`` in its
    path is written stratum by stratum. A site the plan did not compute keeps the facade's figures.
    Raises ValueError for a figure whose result cannot take the report's shape there."""
    out = copy.deepcopy(report)
    scopes = [(out["pooled"], result.get("pooled") or {}),
              *((out["sites"][s], result.get("sites", {}).get(s)) for s in out.get("sites", {}))]
    for figures, mine in scopes:
        if not mine:
            continue
        for f in plan["figures"]:
            if not f.get("outcomes") or f["id"] not in mine:
                continue
            if "*" not in f["outcomes"]:
                _write(figures, f["outcomes"].split("."), f["type"], mine[f["id"]])
                continue
            head, _, tail = f["outcomes"].partition(".*")
            for stratum, value in (mine[f["id"]].get("by") or {}).items():
                _write(figures, [*head.split("."), stratum, *([p for p in tail.split(".") if p])], f["type"], value)
    return out


def _write(figures: dict[str, Any], path: list[str], kind: str, result: Mapping[str, Any]) -> None:
    """The figure at ``path``, in the facade's shape; where the facade gives nothing (no vial
    record, one site's heterogeneity) and the plan has nothing either, nothing is written."""
    facade = _get(figures, path)
    if facade is None:
        ours = comparable(kind, result, facade=False)
        if ours in (None, {}) or (kind == "summary" and not ours.get("n")):
            return
    _put(figures, path, _shaped(kind, result, facade))


def _get(node: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _put(node: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _shaped(kind: str, result: Mapping[str, Any], facade: Any) -> Any:
    """The plan's ``result`` of a figure of type ``kind`` in the shape of the facade's value."""
    ours = comparable(kind, result, facade=False)
    if kind == "count":
        return {**facade, "count": ours} if isinstance(facade, Mapping) else ours
    if kind == "proportion":
        return {**(facade or {}), **ours}
    if kind == "summary":
        if facade is not None and not isinstance(facade, Mapping):  # a total
            total = result.get("sum")
            return int(total) if isinstance(total, float) and total.is_integer() else total
        if not ours.get("n"):
            return {"n": 0, **{k: v for k, v in (facade or {}).items() if k not in _SUMMARY}}
        keys = list(facade) if facade else ["n", "mean", "median", "min", "max", "sd"]
        kept = {k: v for k, v in (facade or {}).items() if k not in _SUMMARY}
        return {**{k: ours[k] for k in keys if k in ours}, **kept}
    if kind == "table":
        return _table(ours, facade)
    if kind == "km":
        excluded = (facade or {}).get("excluded") or {}
        if sum(excluded.values()) != ours["excluded"]:  # the plan's own reasons when the count differs
            excluded = dict(result.get("excluded") or {})
        return {**(facade or {}), **{k: v for k, v in ours.items() if k != "excluded"}, "excluded": excluded}
    if kind == "heterogeneity":
        return {**(facade or {}), **ours} if ours else facade
    if kind in ("followup", "ratio"):
        return ours
    raise ValueError(f"a {kind} figure has no place in /outcomes")


def _table(ours: dict[str, Any], facade: Any) -> dict[str, Any]:
    """A one- or two-way table of the plan in the facade's layout: its categories in its order
    (zeros kept), then any the facade does not list; in a two-way table, a stratum's entries that
    are not cells (its total ``n``, its rates) stay."""
    facade = facade if isinstance(facade, Mapping) else {}
    out: dict[str, Any] = {}
    for key in [*facade, *(k for k in ours if k not in facade)]:
        mine, theirs = ours.get(key), facade.get(key)
        if isinstance(mine, Mapping) or isinstance(theirs, Mapping):
            theirs = theirs if isinstance(theirs, Mapping) else {}
            mine = mine if isinstance(mine, Mapping) else {}
            cells = {c: (mine.get(c, 0) if _cell(v) and c != "n" else v) for c, v in theirs.items()}
            out[key] = {**cells, **{c: n for c, n in mine.items() if c not in cells}}
        else:
            out[key] = mine if mine is not None else 0
    return out


def _cell(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
