"""The default analysis plan over a store's resources (issue 19): what ``$evaluate-measure``, the
dashboard's outcomes table and ``adapter outcomes`` render.

:class:`StorePlan` runs the SQL on FHIR views over the store's current resources (compiled to SQL
on an embedded DuckDB, adapter/views/engines.py ``run_views_resources``) and keeps their rows
until the store changes: any write adds a version (``Store.version_total``), so the next call
runs the views again. The plan itself (plans/default.yaml) runs on every call, with the
Kaplan–Meier time point, the sites and the period of the request.
"""

from __future__ import annotations

import threading
from typing import Any

from adapter.config import ROOT
from adapter.store import Store


class StorePlan:
    """The default plan's figures over one store. Thread-safe; one per process and store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._version: int | None = None
        self._rows: dict[str, list[dict[str, Any]]] = {}

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """The rows of every view in ``views/`` over the store's current resources (view name ->
        rows), run again only when the store has changed since the last call."""
        from adapter.views.engines import run_views_resources
        from adapter.views.figures import load_views

        with self._lock:
            version = self.store.version_total()
            if version != self._version:
                views = load_views(ROOT / "views")
                types = sorted({str(v.resource) for v in views.values()})
                self._rows = run_views_resources(views, (r for t in types for r in self.store.iter_resources(t)))
                self._version = version
            return self._rows

    def result(self, timepoint_months: float = 36.0, sites: list[str] | None = None,
               period: tuple[str, str] | None = None, suppress_below: int | None = None) -> dict[str, Any]:
        """run_plan's output for plans/default.yaml: Kaplan–Meier figures read at
        ``timepoint_months`` (x 30.4375 days), only ``sites`` when given, only the patients whose
        blinatumomab started in ``period`` (ISO dates) when given, small cells withheld below
        ``suppress_below``. Raises PlanError (a broken plan) or ViewDefinitionError (a broken view)."""
        from adapter.analysis.plan import load_plan, run_plan
        from adapter.analysis.verify import DEFAULT_PLAN
        from adapter.outcomes.stats import DAYS_PER_MONTH

        plan = load_plan(DEFAULT_PLAN)
        days = round(timepoint_months * DAYS_PER_MONTH, 4)
        plan = {**plan, "figures": [{**f, "at_days": [days]} if f["type"] == "km" else f for f in plan["figures"]],
                **({"cohort": {"sites": sites}} if sites else {})}
        return run_plan(plan, self.rows(), suppress_below=suppress_below, period=period)
