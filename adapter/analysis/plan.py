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
    quartiles, range, mean and SD, with ``round`` decimals; the patients without a value are
    counted as ``missing``;
  - ``km``: Kaplan–Meier (lifelines) from ``origin`` (a date expression) to ``event`` (the date of
    the first event, NULL when none) or, without one, censored at ``censor`` (the end of follow-up):
    survival at ``at_days`` with 95 % CIs, median survival, events, and the step curve
    (``[days, survival, CI low, CI high]`` per event time); patients left out (no origin, no end of
    follow-up, an end before the origin) counted by reason;
  - ``table``: patients by the value of ``rows`` (and ``columns``): a Table 1 stratum or an
    adverse-event table by term x grade.

Every figure is given per site and pooled. Small-cell suppression is not applied yet: the output
is for the analyst who holds the export (adapter/analysis/report.py renders it as HTML).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from adapter.errors import ConfigError

SCHEMA = Path(__file__).resolve().parents[2] / "plans" / "plan.schema.json"
_GONE = "('entered-in-error', 'not-done')"


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


def _tables(con: Any, rows: Mapping[str, list[dict[str, Any]]]) -> None:
    """Each view's rows as a DuckDB table named after the view (columns as the engine gave them)."""
    import pandas as pd

    for name, data in rows.items():
        # object columns: DuckDB infers each column's type from its values (an integer grade stays an integer)
        frame = pd.DataFrame(data, dtype=object) if data else pd.DataFrame({"patient_key": pd.Series(dtype="object")})
        con.register(f"_{name}", frame)
        con.execute(f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "_{name}"')
        con.unregister(f"_{name}")


def run_plan(plan: Mapping[str, Any], rows: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """The figures of ``plan`` from the view rows ``rows`` (view name -> rows, e.g. from
    adapter/views/engines.py ``run_views_duckdb``): ``{"plan", "title", "sites": {site: {figure
    id: result}}, "pooled": {...}}``. Raises PlanError naming the variable or figure whose SQL fails."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        _tables(con, rows)
        # the plan's SQL sees the view tables only: no files, no network, no extensions
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        sites = plan.get("cohort", {}).get("sites")
        site_filter = f" AND site IN ({', '.join(_q(s) for s in sites)})" if sites else ""
        con.execute(f"""CREATE TABLE patients AS
            SELECT DISTINCT i.patient_key, split_part(p.organization_key, '/', 2) AS site
            FROM pedall_blinatumomab_infusion i JOIN pedall_patient p USING (patient_key)
            WHERE i.status NOT IN {_GONE}""")
        if site_filter:
            con.execute(f"DELETE FROM patients WHERE NOT (true{site_filter})")
        for name, sql in (plan.get("variables") or {}).items():
            try:
                con.execute(f"CREATE TEMP TABLE _q AS SELECT * FROM ({sql}) AS q")
                cols = [d[0] for d in con.execute("SELECT * FROM _q LIMIT 0").description]
                if len(cols) != 2:
                    raise PlanError(f"variable {name}: the query must give (patient_key, value), gave {len(cols)} columns")
                con.execute("CREATE TEMP TABLE _v AS SELECT * FROM _q AS q(patient_key, value)")
                con.execute("DROP TABLE _q")
                dup = con.execute("SELECT patient_key FROM _v GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchone()
                if dup:
                    raise PlanError(f"variable {name}: several rows for one patient (the query must give one per patient)")
                con.execute(f'ALTER TABLE patients ADD COLUMN "{name}" {_duck_type(con, "value")}')
                con.execute(f'UPDATE patients SET "{name}" = _v.value FROM _v WHERE _v.patient_key = patients.patient_key')
                con.execute("DROP TABLE _v")
            except duckdb.Error as exc:
                raise PlanError(f"variable {name}: {str(exc).splitlines()[0][:300]}") from None
        site_list = [r[0] for r in con.execute("SELECT DISTINCT site FROM patients ORDER BY 1").fetchall()]
        out: dict[str, Any] = {"plan": plan["id"], "title": plan.get("title"), "sites": {}, "pooled": {}}
        for scope, cond in [*((s, f"site = {_q(s)}") for s in site_list), ("pooled", "true")]:
            figures = {f["id"]: _figure(con, f, cond) for f in plan["figures"]}
            if scope == "pooled":
                out["pooled"] = figures
            else:
                out["sites"][scope] = figures
        return out
    finally:
        con.close()


def _duck_type(con: Any, column: str) -> str:
    row = con.execute(f'SELECT typeof("{column}") FROM _v WHERE "{column}" IS NOT NULL LIMIT 1').fetchone()
    return str(row[0]) if row else "VARCHAR"


def _q(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def _figure(con: Any, f: Mapping[str, Any], scope: str) -> dict[str, Any]:
    import duckdb

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
            values = [float(r[0]) for r in con.execute(
                f"SELECT ({f['value']}) FROM patients WHERE ({scope}) AND ({where}) AND ({f['value']}) IS NOT NULL").fetchall()]
            missing = _one(con, f"SELECT count(*) FROM patients WHERE ({scope}) AND ({where}) AND ({f['value']}) IS NULL")
            return {**_summary(values, int(f.get("round", 2))), "missing": missing}
        if kind == "km":
            return _km(con, f, scope, where)
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
    """n, median, quartiles (linear interpolation, numpy's default), range, mean, SD (n - 1)."""
    import numpy as np

    if not values:
        return {"n": 0, "median": None, "iqr": None, "range": None, "mean": None, "sd": None}
    a = np.array(values, dtype=float)
    r = lambda x: round(float(x), digits)  # noqa: E731
    return {"n": len(values), "median": r(np.median(a)), "iqr": [r(np.percentile(a, 25)), r(np.percentile(a, 75))],
            "range": [r(a.min()), r(a.max())], "mean": r(a.mean()), "sd": r(a.std(ddof=1)) if len(a) > 1 else None}


def _km(con: Any, f: Mapping[str, Any], scope: str, where: str) -> dict[str, Any]:
    """Kaplan–Meier from ``origin`` to ``event`` or ``censor`` (dates), in days (lifelines)."""
    from lifelines import KaplanMeierFitter

    data = con.execute(f"""SELECT CAST(({f['origin']}) AS DATE), CAST(({f['event']}) AS DATE), CAST(({f['censor']}) AS DATE)
                           FROM patients WHERE ({scope}) AND ({where})""").fetchall()
    durations, events, excluded = [], [], {}
    for origin, event, censor in data:
        end, happened = (event, 1) if event is not None else (censor, 0)
        reason = ("no origin date" if origin is None else "no event and no end of follow-up" if end is None
                  else "event or end of follow-up before the origin" if end < origin else None)
        if reason:
            excluded[reason] = excluded.get(reason, 0) + 1
            continue
        durations.append(float((end - origin).days))
        events.append(happened)
    result: dict[str, Any] = {"n": len(durations), "events": int(sum(events)), "excluded": dict(sorted(excluded.items()))}
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
    curve = [[round(float(t), 2), round(float(v), 4), round(_nan0(float(ci.loc[t].iloc[0])), 4), round(_nan0(float(ci.loc[t].iloc[1])), 4)]
             for t, v in sf.items()]
    return {**result, "at": at, "median_days": None if math.isinf(median) else round(float(median), 1),
            "curve": curve}


def _nan0(x: float) -> float:
    return 0.0 if math.isnan(x) else x
