"""The default analysis plan over a store's resources (issue 19): what ``$evaluate-measure``, the
dashboard's outcomes table and ``adapter outcomes`` render.

:class:`StorePlan` runs the SQL on FHIR views over the store's current resources (compiled to SQL
on an embedded DuckDB, adapter/views/engines.py ``run_views_resources``) and keeps their rows.
A view row depends on one resource only (SQL on FHIR v2: a view selects from each resource on its
own), so after a write only the resources whose version changed are run again and their rows
replaced: any write adds a version (``Store.version_total``), and the current ``versionId`` of
every resource (``Store.current_versions``) says which changed. The plan itself
(plans/default.yaml) runs on every call, with the Kaplan–Meier time point, the sites and the
period of the request.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from adapter.config import ROOT
from adapter.store import Store

#: When more than this share of the resources changed, the views run again over the whole store
#: (one pass is then cheaper than reading the changed resources one by one)
FULL_RUN_SHARE = 0.25


class StorePlan:
    """The default plan's figures over one store. Thread-safe; one per process and store.
    ``last_run``: how the view rows were last brought up to date, ``("full" | "incremental", resources)``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._version: int | None = None
        self._versions: dict[tuple[str, str], int] | None = None
        self._by_key: dict[str, dict[str, list[dict[str, Any]]]] = {}
        self._rows: dict[str, list[dict[str, Any]]] = {}
        self._results: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.last_run: tuple[str, int] | None = None

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The rows of every view in ``views/`` over the store's current resources (view name ->
        rows), brought up to date when the store has changed since the last call: the views run
        over the resources created, updated or deleted since (their old rows dropped), or over the
        whole store the first time and after a large change."""
        from adapter.views.engines import run_views_resources
        from adapter.views.figures import load_views

        with self._lock:
            version = self.store.version_total()  # read first: a write after it is seen next time
            if version == self._version:
                return self._rows
            views = load_views(ROOT / "views")
            keys = {name: _key_column(getattr(v, "view", v)) for name, v in views.items()}
            types = sorted({str(v.resource) for v in views.values()})
            current = self.store.current_versions(types)  # before the resources: a later write is seen next time
            before = self._versions
            changed = [] if before is None else [k for k, v in current.items() if before.get(k) != v]
            gone = [] if before is None else [k for k in before if k not in current]
            if before is None or None in keys.values() or len(changed) + len(gone) > FULL_RUN_SHARE * max(len(current), 1):
                rows = run_views_resources(views, (r for t in types for r in self.store.iter_resources(t)))
                self._by_key = {name: _group(rows.get(name, []), keys[name]) for name in views}
                self.last_run = ("full", len(current))
            else:
                fresh = run_views_resources(views, self.store.read_current(changed)) if changed else {}
                for name in views:
                    table = self._by_key.setdefault(name, {})
                    for t, i in (*changed, *gone):
                        table.pop(f"{t}/{i}", None)
                    for key, group in _group(fresh.get(name, []), keys[name]).items():
                        table[key] = group
                self.last_run = ("incremental", len(changed) + len(gone))
            self._rows = {name: [r for group in self._by_key[name].values() for r in group] for name in views}
            self._versions = current
            self._version = version
            self._results = {}
            return self._rows

    def result(self, timepoint_months: float = 36.0, sites: list[str] | None = None,
               period: tuple[str, str] | None = None, suppress_below: int | None = None) -> dict[str, Any]:
        """run_plan's output for plans/default.yaml: Kaplan–Meier figures read at
        ``timepoint_months`` (x 30.4375 days), only ``sites`` when given, only the patients whose
        blinatumomab started in ``period`` (ISO dates) when given, small cells withheld below
        ``suppress_below``. Raises PlanError (a broken plan) or ViewDefinitionError (a broken view)."""
        from adapter.analysis.plan import run_plan
        from adapter.outcomes.stats import DAYS_PER_MONTH

        rows = self.rows()
        key = (self._version, timepoint_months, tuple(sites or ()), period, suppress_below)
        with self._lock:
            if key in self._results:  # the same request over the same rows
                return self._results[key]
        plan = default_plan()
        days = round(timepoint_months * DAYS_PER_MONTH, 4)
        plan = {**plan, "figures": [{**f, "at_days": [days]} if f["type"] == "km" else f for f in plan["figures"]],
                **({"cohort": {"sites": sites}} if sites else {})}
        result = run_plan(plan, rows, suppress_below=suppress_below, period=period)
        with self._lock:
            if len(self._results) >= 32:
                self._results.clear()
            self._results[key] = result
        return result


_PLANS: weakref.WeakKeyDictionary[Store, StorePlan] = weakref.WeakKeyDictionary()
_REGISTRY = threading.Lock()


def for_store(store: Store) -> StorePlan:
    """The one :class:`StorePlan` of ``store`` in this process (its view rows are shared by the
    API, the dashboard and the CLI)."""
    with _REGISTRY:
        kept = _PLANS.get(store)
        if kept is None:
            kept = _PLANS[store] = StorePlan(store)
        return kept


_DEFAULT: dict[str, Any] = {}


def default_plan() -> dict[str, Any]:
    """plans/default.yaml, loaded and checked once per change of the file. Raises PlanError."""
    from adapter.analysis.plan import load_plan
    from adapter.analysis.verify import DEFAULT_PLAN

    stamp = DEFAULT_PLAN.stat().st_mtime_ns
    if _DEFAULT.get("stamp") != stamp:
        _DEFAULT.update(plan=load_plan(DEFAULT_PLAN), stamp=stamp)
    return dict(_DEFAULT["plan"])


def _key_column(view: Any) -> str | None:
    """The name of the view's column holding its resource's key (path ``getResourceKey()``), or
    None when it has none (its rows cannot be told apart by resource: it always runs in full)."""
    for select in view.get("select", []) if isinstance(view, dict) else []:
        for column in select.get("column", []):
            if column.get("path") == "getResourceKey()":
                return str(column["name"])
    return None


def _group(rows: list[dict[str, Any]], key: str | None) -> dict[str, list[dict[str, Any]]]:
    """Rows by the resource key in column ``key``."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.get(key)) if key else "", []).append(r)
    return out
