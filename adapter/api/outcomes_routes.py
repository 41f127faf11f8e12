"""The outcomes facade over HTTP: ``GET /outcomes`` (JSON), ``GET /outcomes.csv``,
``GET /outcomes/km.{png,svg}`` (Kaplan–Meier plots), and ``GET /Measure/{id}/$evaluate-measure``
(FHIR MeasureReport; R4 §Measure "$evaluate-measure", with ``periodStart``/``periodEnd`` selecting
patients by the start of blinatumomab). Figures are computed on each request from the stored
patient courses, which the store keeps in step with the FHIR resources (adapter/store/courses.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response

from adapter.analysis.store_plan import StorePlan
from adapter.api.fhir_http import FHIRError, FHIRResponse
from adapter.api.security import require
from adapter.config import Settings
from adapter.outcomes import STRATA, outcomes_report
from adapter.outcomes.cohort import PatientCourse
from adapter.outcomes.measure import load_measures, measure_report
from adapter.outcomes.render import km_plot, to_csv
from adapter.outcomes.stats import load_libraries
from adapter.privacy import suppress_small_cells
from adapter.search.params import date_range
from adapter.spec.loader import load_drug_costs
from adapter.store import Store
from adapter.store.db import now_instant

Site = Annotated[str | None, Query(description="one site's code; all sites (and pooled) when left out", max_length=32)]
Sites = Annotated[str | None, Query(description="comma-separated site codes: pool only these sites (a study's centres)",
                                    max_length=1000)]
Suppress = Annotated[bool | None, Query(description="small-cell suppression of counts under the threshold "
                                     "(default: on for network views, off for one site's own view)")]
Stratify = Annotated[str | None, Query(description=f"survival strata and log-rank test: one of {', '.join(STRATA)}")]
Timepoint = Annotated[float, Query(description="months at which KM estimates are read", gt=0, le=600)]


def _allowed(request: Request) -> bool | None:
    """403 unless the role may see outcomes; a coordinator always gets small-cell suppression."""
    who = require(request, "outcomes", "MeasureReport")
    return True if who.role == "coordinator" else None


Allowed = Annotated[bool | None, Depends(_allowed)]


def _cohort(store: Store, site: str | None, sites: str | None = None) -> list[PatientCourse]:
    known = store.sites()
    wanted = [s.strip() for s in sites.split(",") if s.strip()] if sites else ([site] if site else [])
    for s in wanted:
        if s not in known:
            raise FHIRError(404, "not-found", f"no data for site '{s}' (sites: {', '.join(known)})")
    if site is not None and not sites:
        return store.cohort(site)
    cohort = store.cohort(None)
    return [c for c in cohort if c.site in wanted] if wanted else cohort


def _stratify(stratify: str | None) -> str | None:
    if stratify is not None and stratify not in STRATA:
        raise FHIRError(400, "invalid", f"stratify must be one of {', '.join(STRATA)}, not '{stratify}'")
    return stratify


def _suppressed(report: dict[str, Any], site: str | None, suppress: bool | None, settings: Settings) -> dict[str, Any]:
    """Small-cell suppression (adapter/privacy.py): on by default for network views (they leave
    a site), off by default for one site's own view (``site=``)."""
    on = site is None if suppress is None else suppress
    if not on:
        return report
    return {**suppress_small_cells(report, settings.small_cell_threshold),
            "suppression": {"threshold": settings.small_cell_threshold,
                            "rule": f"counts from 1 to {settings.small_cell_threshold - 1} are shown as "
                                    f"'<{settings.small_cell_threshold}'; their rates and intervals are withheld"}}


def store_plan(store: Store) -> StorePlan:
    """The one :class:`StorePlan` of ``store`` in this process (adapter/analysis/store_plan.py
    ``for_store``: its view rows are shared by the API and the dashboard)."""
    from adapter.analysis.store_plan import for_store

    return for_store(store)


def add_outcome_routes(app: FastAPI, store: Store, settings: Settings) -> None:
    """Register the outcomes endpoints on ``app``."""
    load_libraries()  # the first outcomes request should not pay for importing lifelines
    plan_over_store = store_plan(store)

    @app.get("/outcomes", response_class=JSONResponse, summary="Outcome figures per site and pooled (JSON)")
    def outcomes(forced: Allowed, site: Site = None, sites: Sites = None, stratify: Stratify = None,
                 timepoint: Timepoint = 36.0, suppress: Suppress = None) -> JSONResponse:
        suppress = forced or suppress
        report = outcomes_report(_cohort(store, site, sites), timepoint, _stratify(stratify),
                                 drug_costs=load_drug_costs(settings.mappings_dir))
        return JSONResponse(_suppressed(report, site, suppress, settings))

    @app.get("/outcomes.csv", response_class=Response, summary="Outcome figures as CSV")
    def outcomes_csv(forced: Allowed, site: Site = None, sites: Sites = None, stratify: Stratify = None,
                     timepoint: Timepoint = 36.0, suppress: Suppress = None) -> Response:
        suppress = forced or suppress
        report = _suppressed(outcomes_report(_cohort(store, site, sites), timepoint, _stratify(stratify),
                                             drug_costs=load_drug_costs(settings.mappings_dir)), site, suppress, settings)
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="outcomes.csv"'})

    @app.get("/Measure/{mid}", summary="Read one of our Measures (profiles/Measure-*.json)")
    def read_measure(mid: str, request: Request) -> FHIRResponse:
        require(request, "read", "Measure")
        m = load_measures(str(settings.profiles_dir)).get(mid)
        if m is None:
            raise FHIRError(404, "not-found", f"Measure/{mid} is not known (Measures: {', '.join(load_measures(str(settings.profiles_dir)))})")
        return FHIRResponse(m)

    @app.get("/Measure/{mid}/$evaluate-measure", summary="MeasureReport of the outcome figures (per site and pooled)")
    def evaluate_measure(mid: str, forced: Allowed, periodStart: Annotated[str | None, Query()] = None,  # noqa: N803 (FHIR names)
                         periodEnd: Annotated[str | None, Query()] = None, site: Site = None,  # noqa: N803
                         timepoint: Timepoint = 36.0) -> FHIRResponse:
        """The Measure's figures computed by its plan (profiles/Library-pedall-default-plan.json:
        plans/default.yaml) over the SQL on FHIR views of the stored resources, the views compiled
        to SQL on an embedded DuckDB; Kaplan–Meier figures read at ``timepoint`` months. A
        coordinator's report leaves out counts under the small-cell threshold."""
        m = load_measures(str(settings.profiles_dir)).get(mid)
        if m is None:
            raise FHIRError(404, "not-found", f"Measure/{mid} is not known")
        for name, value in (("periodStart", periodStart), ("periodEnd", periodEnd)):
            if value is not None:
                try:
                    date_range(value)
                except ValueError:
                    raise FHIRError(400, "invalid", f"{name}: '{value}' is not a FHIR date") from None
        cohort = _cohort(store, site)
        lo = date_range(periodStart)[0][:10] if periodStart else "0001-01-01"
        hi = date_range(periodEnd)[1][:10] if periodEnd else "9999-12-31"
        starts = sorted(c.start.isoformat() for c in cohort if c.start is not None and lo <= c.start.isoformat() <= hi)
        period = (periodStart or (starts[0] if starts else "0001-01-01"), periodEnd or (starts[-1] if starts else "9999-12-31"))
        result = plan_over_store.result(timepoint, [site] if site else None, (lo, hi) if periodStart or periodEnd else None)
        return FHIRResponse(measure_report(m, result, period, now_instant(), settings.small_cell_threshold if forced else None))

    @app.get("/outcomes/km.{fmt}", response_class=Response, summary="Kaplan-Meier plot (png or svg)")
    def km(fmt: str, forced: Allowed, endpoint: Annotated[str, Query(pattern="^(os|rfs)$")] = "os", site: Site = None,
           sites: Sites = None, stratify: Stratify = None, timepoint: Timepoint = 36.0, suppress: Suppress = None) -> Response:
        if fmt not in ("png", "svg"):
            raise FHIRError(404, "not-found", f"plots are served as km.png or km.svg, not km.{fmt}")
        small = forced or (suppress if suppress is not None else site is None)  # as the tables (_suppressed)
        body = km_plot(_cohort(store, site, sites), endpoint, _stratify(stratify), fmt, timepoint,
                       settings.small_cell_threshold if small else None)
        return Response(body, media_type="image/png" if fmt == "png" else "image/svg+xml")
