"""Analysis plans as data (issue 19): a study's tables and figures declared over SQL on FHIR view
columns, computed from FHIR alone.

A plan (``plans/<name>.yaml``, checked against ``plans/plan.schema.json``) has three parts:

- ``cohort``: patients with a blinatumomab MedicationAdministration that is not
  ``entered-in-error``/``not-done`` (the facade's rule, adapter/views/figures.py), in their
  Patient's site, optionally only ``sites``;
- ``variables``: one value per patient each, in order; each is an SQL query over the view tables
  (``pedall_patient``, ``pedall_mrd``... as the views in ``views/`` produce them) and over the
  ``patients`` table built so far, returning ``(patient_key, value)``; a patient without a row
  gets NULL. SQL is DuckDB's dialect: the views run compiled to SQL on an embedded DuckDB
  (adapter/views/engines.py), so the plan is the whole computation, readable by anyone;
- ``figures``: each of a ``type``:

  - ``count``: patients (with ``where``, an SQL condition over the patients table);
  - ``proportion``: patients meeting ``where`` among those meeting ``among`` (default all), with
    the Wilson 95 % interval (SciPy);
  - ``summary``: ``value`` (an SQL expression) over the patients that have one: n, median,
    quartiles, range, mean, SD and sum, with ``round`` decimals; the patients without a value are
    counted as ``missing``. With ``from`` (an SQL query giving ``patient_key`` and more columns,
    several rows per patient allowed) the values are those rows' (e.g. the length of each cycle),
    of the patients in scope;
  - ``km``: Kaplan–Meier (lifelines) from ``origin`` (a date expression) to ``event`` (the date of
    the first event, NULL when none) or, without one, censored at ``censor`` (the end of follow-up):
    survival at ``at_days`` with 95 % CIs, median survival, events, and the step curve
    (``[days, survival, CI low, CI high]`` per event time); patients left out (no origin, no end of
    follow-up, an end before the origin) counted by reason;
  - ``table``: patients by the value of ``rows`` (and ``columns``): a Table 1 stratum or an
    adverse-event table by term x grade;
  - ``logrank``: the log-rank test (lifelines ``multivariate_logrank_test``; Mantel-Haenszel) of
    the ``km`` times between the values of ``groups``, within ``where`` (a comparison inside a
    subgroup, e.g. HSCT vs none among patients in CR): per group n and events, chi2, df, p;
  - ``cox``: a Cox proportional-hazards model (lifelines ``CoxPHFitter``, Efron ties) of the
    ``km`` times on ``covariates`` (name -> numeric SQL expression): per covariate the hazard ratio
    with its Wald 95 % interval and p;
  - ``followup``: median follow-up by the reverse Kaplan-Meier method (Schemper & Smith, Control
    Clin Trials 1996;17:343): the ``km`` times with censoring as the event;
  - ``ratio``: the sum of ``value`` over the sum of ``over`` (SQL expressions per patient; the
    patients with both), rounded to ``round`` decimals (default 4);
  - ``heterogeneity``: whether the proportion of ``where`` among ``among`` differs across the
    sites in scope: Pearson's chi-square test of independence on the sites x (with, without)
    table (SciPy ``chi2_contingency``, adapter/outcomes/stats.py); ``{}`` with one site.

Any figure may have ``by`` (an SQL expression over the patients table): the same figure is then
given for each of its values too, a Table 1 by stratum or a comparison by group, with the patients
without a value counted.

Survival figures count the patients they leave out by reason (no origin, no end, an end before the
origin, a NULL group or covariate): nothing is dropped in silence.

Every figure is given per site and pooled. With ``suppress_below`` (the plan's ``min_cell_count``,
or ``adapter plan --suppress N``) the output is fit to leave the analyst: small cells follow the
facade's rule (adapter/privacy.py ``suppress_small_cells``), and a survival figure of fewer
patients keeps only its ``n``. adapter/analysis/report.py renders the output as HTML.
"""

from __future__ import annotations

import functools
import json
import math
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import ConfigError

SCHEMA = Path(__file__).resolve().parents[2] / "plans" / "plan.schema.json"
_GONE = "('entered-in-error', 'not-done')"
#: The cohort of every plan (one row per patient and the site of its Patient): patients with a
#: blinatumomab infusion that is not entered-in-error or not-done (views/README.md, "Cohort").
COHORT_SQL = ("SELECT DISTINCT i.patient_key, split_part(p.organization_key, '/', 2) AS site "
              "FROM pedall_blinatumomab_infusion i JOIN pedall_patient p USING (patient_key) "
              f"WHERE i.status NOT IN {_GONE}")


class PlanError(ConfigError):
    """A plan that breaks its schema (the message names the element), or whose SQL fails on the
    views (the message names the variable or figure and the engine's reason). CLI exit 2."""


def load_plan(path: Path) -> dict[str, Any]:
    """The plan in ``path`` (YAML), checked against plans/plan.schema.json. Raises PlanError."""
    import jsonschema

    try:
        plan = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml.CSafeLoader)
    except (OSError, yaml.YAMLError) as exc:
        raise PlanError(f"{path.name}: not a readable YAML file ({exc.__class__.__name__})") from None
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(plan), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top)"
        raise PlanError(f"{path.name}: {where}: {e.message}")
    return plan


@functools.lru_cache(maxsize=1)
def _view_columns() -> dict[str, list[str]]:
    """Column names of the project's views (views/*.json), for a view that gave no row."""
    from adapter.views.figures import load_views

    return {name: [c["name"] for c in v.columns] for name, v in load_views(SCHEMA.parents[1] / "views").items()}


def _tables(con: Any, rows: Mapping[str, list[dict[str, Any]]]) -> None:
    """Each view's rows as a DuckDB table named after the view (columns as the engine gave them;
    a view without rows gets its declared columns, empty)."""
    import pandas as pd
    import pyarrow as pa

    for name, data in rows.items():
        try:  # Arrow infers each column's type from its values (an integer grade stays an integer)
            frame: Any = pa.Table.from_pylist(data) if data else None
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column: DuckDB infers from objects
            frame = pd.DataFrame(data, dtype=object)
        if frame is None:
            frame = pd.DataFrame({c: pd.Series(dtype="object") for c in _view_columns().get(name, ["patient_key"])})
        con.register(f"_{name}", frame)
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "_{name}"')
        con.unregister(f"_{name}")


def run_plan(plan: Mapping[str, Any], rows: Mapping[str, list[dict[str, Any]]],
             suppress_below: int | None = None, period: tuple[str, str] | None = None) -> dict[str, Any]:
    """The figures of ``plan`` from the view rows ``rows`` (view name -> rows, e.g. from
    adapter/views/engines.py ``run_views_duckdb``): ``{"plan", "title", "sites": {site: {figure
    id: result}}, "pooled": {...}}`` (plus ``"suppression": {"threshold"}`` when
    ``suppress_below`` is given; see the module docstring). ``period`` (ISO dates, inclusive)
    keeps the patients whose first blinatumomab infusion started in it (FHIR $evaluate-measure's
    periodStart/periodEnd). Raises PlanError naming the variable or figure whose SQL fails."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        _tables(con, rows)
        # the plan's SQL sees the view tables only: no files, no network, no extensions
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        sites = plan.get("cohort", {}).get("sites")
        site_filter = f" AND site IN ({', '.join(_q(s) for s in sites)})" if sites else ""
        con.execute(f"CREATE TABLE patients AS {COHORT_SQL}")
        if site_filter:
            con.execute(f"DELETE FROM patients WHERE NOT (true{site_filter})")
        if period is not None:
            con.execute(f"""DELETE FROM patients WHERE patient_key NOT IN (
                SELECT patient_key FROM pedall_blinatumomab_infusion WHERE status NOT IN {_GONE}
                GROUP BY 1 HAVING min(substr("start", 1, 10)) BETWEEN ? AND ?)""", [period[0][:10], period[1][:10]])
        _variables(con, plan.get("variables") or {})
        site_list = [r[0] for r in con.execute("SELECT DISTINCT site FROM patients ORDER BY 1").fetchall()]
        out: dict[str, Any] = {"plan": plan["id"], "title": plan.get("title"), "sites": {}, "pooled": {}}
        scopes = [*((s, f"site = {_q(s)}") for s in site_list), ("pooled", "true")]
        by_scope: dict[Any, dict[str, Any]] = {scope: {} for scope, _ in scopes}
        counted = _counts_together(con, plan["figures"], scopes, site_list)
        for f in plan["figures"]:
            got = counted.get(f["id"]) or _figure_in_scopes(con, f, scopes, site_list)
            for scope, result in got.items():
                by_scope[scope][f["id"]] = result
        for scope, _ in scopes:
            figures = by_scope[scope]
            if suppress_below:
                figures = {f["id"]: suppress(f["type"], figures[f["id"]], suppress_below) for f in plan["figures"]}
            if scope == "pooled":
                out["pooled"] = figures
            else:
                out["sites"][scope] = figures
        if suppress_below:
            out["suppression"] = {"threshold": suppress_below}
        return out
    finally:
        con.close()


_SURVIVAL = ("km", "logrank", "cox", "followup")


def _variables(con: Any, variables: Mapping[str, str]) -> None:
    """Add each variable to the patients table as a column, in order: a variable's query that reads
    the patients table sees every variable before it. Columns are added together, in one rebuild
    of the table, until a query names a variable not yet added (a columnar rebuild per variable was
    most of a plan's time). Raises PlanError naming the variable."""
    import duckdb

    pending: list[tuple[str, str, str]] = []  # (variable, its temporary table, SQL type)

    def materialize() -> None:
        if not pending:
            return
        picked = ", ".join(f'CAST({t}.value AS {typ}) AS "{name}"' for name, t, typ in pending)
        joins = " ".join(f"LEFT JOIN {t} USING (patient_key)" for _, t, _ in pending)
        con.execute(f"CREATE OR REPLACE TABLE patients AS SELECT patients.*, {picked} FROM patients {joins}")
        for _, t, _ in pending:
            con.execute(f"DROP TABLE {t}")
        pending.clear()

    for i, (name, sql) in enumerate(variables.items()):
        table = f"_v{i}"
        try:
            if re.search(r"\bpatients\b", sql) and any(re.search(rf"\b{re.escape(n)}\b", sql) for n, _, _ in pending):
                materialize()  # the query reads a variable not yet in the patients table
            con.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM ({sql}) AS q(patient_key, value)")
            cols = con.execute(f"SELECT * FROM {table} LIMIT 0").description
            if len(cols) != 2:
                raise PlanError(f"variable {name}: the query must give (patient_key, value), gave {len(cols)} columns")
            dup = con.execute(f"SELECT patient_key FROM {table} GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchone()
            if dup:
                raise PlanError(f"variable {name}: several rows for one patient (the query must give one per patient)")
            pending.append((name, table, _duck_type(con, "value", table, str(cols[1][1]))))
        except duckdb.Error as exc:
            raise PlanError(f"variable {name}: {str(exc).splitlines()[0][:300]}") from None
    try:
        materialize()
    except duckdb.Error as exc:
        raise PlanError(f"variables: {str(exc).splitlines()[0][:300]}") from None


def suppress(kind: str, result: dict[str, Any], threshold: int) -> dict[str, Any]:
    """One figure's result fit to leave the analyst: a survival figure (``km``, ``logrank``,
    ``cox``, ``followup``) of 1 to ``threshold`` - 1 patients keeps only ``{"n": "<threshold"}``;
    anything else follows adapter/privacy.py ``suppress_small_cells`` (counts from 1 to threshold - 1
    shown as ``"<threshold"``, their rates and intervals withheld, small summaries reduced to n)."""
    from adapter.privacy import suppress_small_cells

    if "by" in result:
        overall = suppress(kind, {k: v for k, v in result.items() if k not in ("by", "by_missing")}, threshold)
        return {**overall, **suppress_small_cells({"by_missing": result["by_missing"]}, threshold),
                "by": {g: suppress(kind, r, threshold) for g, r in result["by"].items()}}
    n = result.get("n")
    if kind in _SURVIVAL and isinstance(n, int) and 0 < n < threshold:
        return {"n": f"<{threshold}"}
    return suppress_small_cells(result, threshold)


def _duck_type(con: Any, column: str, table: str = "_v", declared: str | None = None) -> str:
    """The column's SQL type as the query declared it (``declared``, else from DESCRIBE: a DATE stays a
    DATE with no row); a column of NULLs whose type the engine could not tell (the view had no value
    at all) is VARCHAR."""
    if declared is None:
        declared = next(str(r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] == column)
    if declared != '"NULL"' and declared.upper() != "NULL":
        return declared
    row = con.execute(f'SELECT typeof("{column}") FROM {table} WHERE "{column}" IS NOT NULL LIMIT 1').fetchone()
    return str(row[0]) if row else "VARCHAR"


def _q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _counts_together(con: Any, figures: list[Mapping[str, Any]], scopes: list[tuple[Any, str]],
                     sites: list[Any]) -> dict[str, dict[Any, Any]]:
    """Every ``count`` and ``proportion`` figure without ``by``, for every scope, from one query
    (figure id -> scope -> result, as :func:`_figure_in_scopes` gives them). Empty when that query
    fails: the figures are then computed one by one, and the failing one named."""
    import duckdb

    simple = [f for f in figures if f["type"] in ("count", "proportion") and not f.get("by")]
    if not simple or None in sites:
        return {}
    parts = []
    for f in simple:
        among, where = f.get("among") or "true", f.get("where") or "true"
        parts.append(f"count(*) FILTER (WHERE ({among})), count(*) FILTER (WHERE ({among}) AND ({where}))")
    try:
        rows = con.execute(f"SELECT site, {', '.join(parts)} FROM patients GROUP BY site").fetchall()
    except duckdb.Error:
        return {}
    from adapter.outcomes.stats import proportion

    out: dict[str, dict[Any, Any]] = {}
    for i, f in enumerate(simple):
        got = {r[0]: (int(r[1 + 2 * i]), int(r[2 + 2 * i])) for r in rows}
        got["pooled"] = (sum(n for n, _ in got.values()), sum(k for _, k in got.values()))
        out[f["id"]] = {scope: ({"count": got.get(scope, (0, 0))[1]} if f["type"] == "count"
                                else proportion(got.get(scope, (0, 0))[1], got.get(scope, (0, 0))[0])) for scope, _ in scopes}
    return out


def _figure_in_scopes(con: Any, f: Mapping[str, Any], scopes: list[tuple[Any, str]], sites: list[Any],
                      restrict: str | None = None) -> dict[Any, Any]:
    """One figure for every scope (each site, then ``pooled``): counts, proportions, tables,
    summaries and the rows of survival figures in one query grouped by site (the pooled figure
    from the same rows), a ``by`` figure in one such query per stratum; the others scope by scope
    (:func:`_figure`), with the same results. ``restrict``: an SQL condition on the patients table
    the figure's patients must also meet (a stratum of ``by``)."""
    import duckdb

    kind = f["type"]
    if None in sites or kind not in ("count", "proportion", "table", "summary", *_SURVIVAL) or (
            f.get("by") and kind not in ("count", "proportion", "summary")):
        return {scope: _figure(con, f, cond) for scope, cond in scopes}
    if f.get("by"):  # the figure overall, then once per value of by (each scope keeps the values it has)
        plain = {k: v for k, v in f.items() if k != "by"}
        g = f"CAST(({f['by']}) AS VARCHAR)"
        try:
            present = con.execute(f"SELECT site, {g} AS g, count(*) FROM patients GROUP BY ALL ORDER BY 2").fetchall()
        except duckdb.Error as exc:
            raise PlanError(f"figure {f.get('id')}: by: {str(exc).splitlines()[0][:300]}") from None
        out = {scope: {**r, "by_missing": 0, "by": {}} for scope, r in _figure_in_scopes(con, plain, scopes, sites).items()}
        values: dict[Any, set[str]] = {scope: set() for scope, _ in scopes}
        for site, v, n in present:
            for scope in (site, "pooled"):
                if v is None:
                    out[scope]["by_missing"] += int(n)
                else:
                    values[scope].add(v)
        for v in sorted(values["pooled"]):
            each = _figure_in_scopes(con, plain, scopes, sites, restrict=f"{g} = {_q(v)}")
            for scope, _ in scopes:
                if v in values[scope]:
                    out[scope]["by"][v] = each[scope]
        return out
    where = f.get("where") or "true"
    if restrict:
        where = f"({where}) AND patient_key IN (SELECT patient_key FROM patients WHERE {restrict})"
    try:
        if kind in _SURVIVAL:  # the rows once, with their site; the model fitted per scope
            fit = {"km": _km, "followup": _followup, "logrank": _logrank, "cox": _cox}[kind]
            every = con.execute(f"SELECT site, {_time_columns(f, _survival_extra(f))} FROM patients WHERE ({where}) "
                                "ORDER BY patient_key").fetchall()
            return {scope: fit(con, f, cond, where, data=[r[1:] for r in every if scope == "pooled" or r[0] == scope])
                    for scope, cond in scopes}
        if kind in ("count", "proportion"):
            among = f.get("among") or "true"
            if restrict:
                among = f"({among}) AND ({restrict})"
                where = f.get("where") or "true"
            got = {site: (int(n), int(k)) for site, n, k in con.execute(
                f"SELECT site, count(*) FILTER (WHERE ({among})), count(*) FILTER (WHERE ({among}) AND ({where})) "
                "FROM patients GROUP BY site").fetchall()}
            got["pooled"] = (sum(n for n, _ in got.values()), sum(k for _, k in got.values()))
            if kind == "count":
                return {scope: {"count": got.get(scope, (0, 0))[1]} for scope, _ in scopes}
            from adapter.outcomes.stats import proportion

            return {scope: proportion(got.get(scope, (0, 0))[1], got.get(scope, (0, 0))[0]) for scope, _ in scopes}
        # the figure's rows with each patient's site (_site), whatever columns ``from`` gives
        source = (f"(SELECT t.*, s._site FROM ({f['from']}) AS t JOIN (SELECT patient_key AS _pk, site AS _site "
                  "FROM patients) AS s ON s._pk = t.patient_key) AS t" if f.get("from")
                  else "(SELECT *, site AS _site FROM patients) AS t")
        if kind == "table":
            cols = [f["rows"], *([f["columns"]] if f.get("columns") else [])]
            names = [f"_c{i}" for i in range(len(cols))]
            picked = ", ".join(f"({c}) AS {n}" for c, n in zip(cols, names, strict=True))
            grouped = con.execute(
                f"SELECT GROUPING(_site) AS _g, _site, {', '.join(names)}, count(DISTINCT patient_key) FROM "
                f"(SELECT _site, patient_key, {picked} FROM {source} WHERE ({where})) AS g "
                f"GROUP BY GROUPING SETS ((_site, {', '.join(names)}), ({', '.join(names)})) "
                f"ORDER BY _g, _site, {', '.join(names)}").fetchall()
            tables: dict[Any, list[list[Any]]] = {scope: [] for scope, _ in scopes}
            for pooled, site, *r in grouped:
                cell = [*(None if v is None else str(v) for v in r[:-1]), int(r[-1])]
                tables["pooled" if pooled else site].append(cell)
            return {scope: {"cells": tables[scope], "dimensions": cols} for scope, _ in scopes}
        values: dict[Any, list[float]] = {scope: [] for scope, _ in scopes}
        missing: dict[Any, int] = {scope: 0 for scope, _ in scopes}
        for site, v in con.execute(f"SELECT _site, ({f['value']}) FROM {source} WHERE ({where})").fetchall():
            if v is None:
                missing[site] += 1
                missing["pooled"] += 1
            else:
                values[site].append(float(v))
                values["pooled"].append(float(v))
        digits = int(f.get("round", 2))
        return {scope: {**_summary(values[scope], digits), "missing": missing[scope]} for scope, _ in scopes}
    except duckdb.Error as exc:
        raise PlanError(f"figure {f.get('id')}: {str(exc).splitlines()[0][:300]}") from None


def _figure(con: Any, f: Mapping[str, Any], scope: str) -> dict[str, Any]:
    """One figure in one scope (an SQL condition on the patients table); with ``by``, the same
    figure per value of the ``by`` expression too (``"by": {value: result}``), and the patients
    without a value counted (``by_missing``)."""
    import duckdb

    if f.get("by"):
        plain = {k: v for k, v in f.items() if k != "by"}
        try:
            values = [r[0] for r in con.execute(f"SELECT DISTINCT CAST(({f['by']}) AS VARCHAR) AS g FROM patients "
                                                 f"WHERE ({scope}) AND ({f['by']}) IS NOT NULL ORDER BY 1").fetchall()]
            missing = _one(con, f"SELECT count(*) FROM patients WHERE ({scope}) AND ({f['by']}) IS NULL")
        except duckdb.Error as exc:
            raise PlanError(f"figure {f.get('id')}: by: {str(exc).splitlines()[0][:300]}") from None
        return {**_figure(con, plain, scope), "by_missing": missing,
                "by": {v: _figure(con, plain, f"({scope}) AND CAST(({f['by']}) AS VARCHAR) = {_q(v)}") for v in values}}
    try:
        kind = f["type"]
        where = f.get("where") or "true"
        if kind == "count":
            return {"count": _one(con, f"SELECT count(*) FROM patients WHERE ({scope}) AND ({where})")}
        if kind == "proportion":
            from adapter.outcomes.stats import proportion

            among = f.get("among") or "true"
            n = _one(con, f"SELECT count(*) FROM patients WHERE ({scope}) AND ({among})")
            k = _one(con, f"SELECT count(*) FROM patients WHERE ({scope}) AND ({among}) AND ({where})")
            return proportion(k, n)
        if kind == "summary":
            rows = (f"({f['from']}) AS t WHERE patient_key IN (SELECT patient_key FROM patients WHERE {scope})"
                    if f.get("from") else f"patients WHERE ({scope})")
            values = [float(r[0]) for r in con.execute(
                f"SELECT ({f['value']}) FROM {rows} AND ({where}) AND ({f['value']}) IS NOT NULL").fetchall()]
            missing = _one(con, f"SELECT count(*) FROM {rows} AND ({where}) AND ({f['value']}) IS NULL")
            return {**_summary(values, int(f.get("round", 2))), "missing": missing}
        if kind == "ratio":  # a quotient of two totals, e.g. outpatient infusion days among all infusion days
            num, den = con.execute(f"SELECT sum(({f['value']})), sum(({f['over']})) FROM patients WHERE ({scope}) AND ({where}) "
                                   f"AND ({f['value']}) IS NOT NULL AND ({f['over']}) IS NOT NULL").fetchone()
            num, den = (None if v is None else float(v) for v in (num, den))
            return {"numerator": num, "denominator": den,
                    "ratio": round(num / den, int(f.get("round", 4))) if num is not None and den else None}
        if kind == "heterogeneity":  # pooled: do the sites differ? (one site: no test, {})
            from adapter.outcomes.stats import heterogeneity

            among = f.get("among") or "true"
            counts = {str(site): (int(k), int(n)) for site, k, n in con.execute(
                f"SELECT site, count(*) FILTER (WHERE ({where})), count(*) FROM patients "
                f"WHERE ({scope}) AND ({among}) GROUP BY 1 ORDER BY 1").fetchall()}
            return heterogeneity(counts) or {}
        if kind == "km":
            return _km(con, f, scope, where)
        if kind == "followup":
            return _followup(con, f, scope, where)
        if kind == "logrank":
            return _logrank(con, f, scope, where)
        if kind == "cox":
            return _cox(con, f, scope, where)
        if kind == "table":
            cols = [f["rows"], *([f["columns"]] if f.get("columns") else [])]
            grouped = con.execute(f"SELECT {', '.join(f'({c})' for c in cols)}, count(DISTINCT patient_key) FROM "
                                  f"({f.get('from') or 'SELECT * FROM patients'}) AS t WHERE "
                                  f"patient_key IN (SELECT patient_key FROM patients WHERE {scope}) AND ({where}) "
                                  f"GROUP BY ALL ORDER BY ALL").fetchall()
            return {"cells": [[*(None if v is None else str(v) for v in r[:-1]), int(r[-1])] for r in grouped],
                    "dimensions": cols}
        raise PlanError(f"figure {f.get('id')}: unknown type {kind!r}")
    except duckdb.Error as exc:
        raise PlanError(f"figure {f.get('id')}: {str(exc).splitlines()[0][:300]}") from None


def _one(con: Any, sql: str) -> int:
    return int(con.execute(sql).fetchone()[0])


def _summary(values: list[float], digits: int) -> dict[str, Any]:
    """n, median, quartiles (linear interpolation, numpy's default, as ``statistics.quantiles``
    method 'inclusive'), range, mean, SD (n - 1) and sum. The mean and the sum are correctly
    rounded sums (``math.fsum``, as ``statistics.fmean``): whatever order an engine gives the rows
    in, a mean of x.xx5 rounds the same way."""
    import numpy as np

    if not values:
        return {"n": 0, "median": None, "iqr": None, "range": None, "mean": None, "sd": None, "sum": None}
    a = np.sort(np.array(values, dtype=float))
    r = lambda x: round(float(x), digits)  # noqa: E731
    total = math.fsum(values)
    mean = total / len(values)
    sd = math.sqrt(float(np.square(a - mean).sum()) / (len(a) - 1)) if len(a) > 1 else None
    return {"n": len(values), "median": r(np.median(a)), "iqr": [r(np.percentile(a, 25)), r(np.percentile(a, 75))],
            "range": [r(a[0]), r(a[-1])], "mean": r(mean), "sd": None if sd is None else r(sd), "sum": r(total)}


def _time_columns(f: Mapping[str, Any], extra: Mapping[str, str]) -> str:
    """The SELECT list of a survival figure's rows: origin, event and censor dates, then ``extra``."""
    cols = "".join(f", ({e})" for e in extra.values())
    return f"CAST(({f['origin']}) AS DATE), CAST(({f['event']}) AS DATE), CAST(({f['censor']}) AS DATE){cols}"


def _survival_extra(f: Mapping[str, Any]) -> dict[str, str]:
    """The per-patient expressions a survival figure keeps besides its times (group, covariates)."""
    return {"group": f["groups"]} if f["type"] == "logrank" else dict(f.get("covariates") or {}) if f["type"] == "cox" else {}


def _times(con: Any, f: Mapping[str, Any], scope: str, where: str, extra: Mapping[str, str] | None = None,
           data: list[Any] | None = None) -> tuple[list[float], list[int], list[list[Any]], dict[str, int]]:
    """Durations in days from ``origin`` to ``event`` (event 1) or else ``censor`` (event 0), the
    ``extra`` expressions per patient kept, and the patients left out, counted by reason. ``data``:
    the rows already fetched (:func:`_time_columns`, in patient order) instead of a query."""
    extra = dict(extra or {})
    if data is None:
        data = con.execute(f"SELECT {_time_columns(f, extra)} FROM patients WHERE ({scope}) AND ({where}) "
                           "ORDER BY patient_key").fetchall()
    durations: list[float] = []
    events: list[int] = []
    kept: list[list[Any]] = []
    excluded: dict[str, int] = {}
    names = list(extra)
    for origin, event, censor, *more in data:
        end, happened = (event, 1) if event is not None else (censor, 0)
        reason = ("no origin date" if origin is None else "no event and no end of follow-up" if end is None
                  else "event or end of follow-up before the origin" if end < origin else
                  next((f"no {name}" for name, v in zip(names, more, strict=True) if v is None), None) if more else None)
        if reason:
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        durations.append(float((end - origin).days))
        events.append(happened)
        kept.append(more)
    return durations, events, kept, dict(sorted(excluded.items()))


def _km(con: Any, f: Mapping[str, Any], scope: str, where: str, data: list[Any] | None = None) -> dict[str, Any]:
    """Kaplan–Meier from ``origin`` to ``event`` or ``censor`` (dates), in days (lifelines)."""
    from lifelines import KaplanMeierFitter

    durations, events, _, excluded = _times(con, f, scope, where, data=data)
    result: dict[str, Any] = {"n": len(durations), "events": int(sum(events)), "excluded": excluded}
    if not durations:
        return {**result, "at": {}, "median_days": None}
    kmf = KaplanMeierFitter().fit(durations, events)
    ci = kmf.confidence_interval_survival_function_
    at = {}
    for t in f.get("at_days") or []:
        s = float(kmf.survival_function_at_times(t).iloc[0])
        upto = ci[ci.index <= t]
        lo, hi = (float(upto.iloc[-1, 0]), float(upto.iloc[-1, 1])) if len(upto) else (1.0, 1.0)
        at[str(t)] = {"survival": round(s, 4), "ci95": [round(0.0 if math.isnan(lo) else lo, 4), round(0.0 if math.isnan(hi) else hi, 4)]}
    median = kmf.median_survival_time_
    sf = kmf.survival_function_.iloc[:, 0]
    bounds = ci.reindex(sf.index).to_numpy()
    curve = [[round(float(t), 2), round(float(v), 4), round(_nan0(float(lo)), 4), round(_nan0(float(hi)), 4)]
             for t, v, (lo, hi) in zip(sf.index, sf.to_numpy(), bounds, strict=True)]
    return {**result, "at": at, "median_days": None if math.isinf(median) else round(float(median), 1),
            "curve": curve}


def _followup(con: Any, f: Mapping[str, Any], scope: str, where: str, data: list[Any] | None = None) -> dict[str, Any]:
    """Median follow-up in days by the reverse Kaplan–Meier method: the same times, with the end of
    follow-up of a patient alive as the event and an event (death) as censoring."""
    from lifelines import KaplanMeierFitter

    durations, events, _, excluded = _times(con, f, scope, where, data=data)
    result: dict[str, Any] = {"n": len(durations), "excluded": excluded}
    if not durations:
        return {**result, "median_days": None, "iqr_days": None}
    kmf = KaplanMeierFitter().fit(durations, [1 - e for e in events])

    def pct(p: float) -> float | None:
        with warnings.catch_warnings():  # the step function is what is wanted, not an interpolation
            warnings.simplefilter("ignore")
            v = float(kmf.percentile(p))
        return None if math.isinf(v) else round(v, 1)

    return {**result, "median_days": pct(0.5), "iqr_days": [pct(0.75), pct(0.25)]}


def _logrank(con: Any, f: Mapping[str, Any], scope: str, where: str, data: list[Any] | None = None) -> dict[str, Any]:
    """The log-rank test between the groups of ``groups`` (lifelines; chi2 with groups - 1 df)."""
    from lifelines.statistics import multivariate_logrank_test

    durations, events, kept, excluded = _times(con, f, scope, where, {"group": f["groups"]}, data=data)
    groups = [str(k[0]) for k in kept]
    per = {g: {"n": groups.count(g), "events": sum(e for e, h in zip(events, groups, strict=True) if h == g)} for g in sorted(set(groups))}
    result: dict[str, Any] = {"n": len(durations), "events": int(sum(events)), "groups": per, "excluded": excluded}
    if len(per) < 2 or not sum(events):
        return {**result, "chi2": None, "df": None, "p": None}
    test = multivariate_logrank_test(durations, groups, events)
    return {**result, "chi2": round(float(test.test_statistic), 4), "df": len(per) - 1, "p": round(float(test.p_value), 4)}


def _cox(con: Any, f: Mapping[str, Any], scope: str, where: str, data: list[Any] | None = None) -> dict[str, Any]:
    """Cox proportional hazards on ``covariates`` (lifelines CoxPHFitter, Efron ties): per
    covariate the hazard ratio, its Wald 95 % interval and p."""
    import pandas as pd
    from lifelines import CoxPHFitter

    names = list(f["covariates"])
    durations, events, kept, excluded = _times(con, f, scope, where, f["covariates"], data=data)
    result: dict[str, Any] = {"n": len(durations), "events": int(sum(events)), "excluded": excluded}
    frame = pd.DataFrame([[float(v) for v in k] for k in kept], columns=names)
    if not sum(events) or any(frame[c].nunique() < 2 for c in names):
        return {**result, "covariates": {c: None for c in names}}
    frame["_t"], frame["_e"] = durations, events
    summary = CoxPHFitter().fit(frame, duration_col="_t", event_col="_e").summary
    return {**result, "covariates": {c: {"hr": round(float(summary.loc[c, "exp(coef)"]), 4),
                                         "ci95": [round(float(summary.loc[c, "exp(coef) lower 95%"]), 4),
                                                  round(float(summary.loc[c, "exp(coef) upper 95%"]), 4)],
                                         "p": round(float(summary.loc[c, "p"]), 4)} for c in names}}


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x
