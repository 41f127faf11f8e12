"""The outcomes facade over HTTP: ``GET /outcomes`` (JSON), ``GET /outcomes.csv`` and
``GET /outcomes/km.{png,svg}`` (Kaplan–Meier plots). Figures are computed from the stored FHIR
resources on each request (adapter/outcomes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.responses import JSONResponse, Response

from adapter.api.fhir_http import FHIRError
from adapter.outcomes import STRATA, build_cohort, outcomes_report
from adapter.outcomes.cohort import PatientCourse
from adapter.outcomes.render import km_plot, to_csv
from adapter.store import Store

Site = Annotated[str | None, Query(description="one site's code; all sites (and pooled) when left out", max_length=32)]
Stratify = Annotated[str | None, Query(description=f"survival strata and log-rank test: one of {', '.join(STRATA)}")]
Timepoint = Annotated[float, Query(description="months at which KM estimates are read", gt=0, le=600)]


def _cohort(store: Store, site: str | None) -> list[PatientCourse]:
    if site is not None and site not in store.sites():
        raise FHIRError(404, "not-found", f"no data for site '{site}' (sites: {', '.join(store.sites())})")
    return build_cohort(store.iter_resources(site=site))


def _stratify(stratify: str | None) -> str | None:
    if stratify is not None and stratify not in STRATA:
        raise FHIRError(400, "invalid", f"stratify must be one of {', '.join(STRATA)}, not '{stratify}'")
    return stratify


def add_outcome_routes(app: FastAPI, store: Store) -> None:
    """Register the outcomes endpoints on ``app``."""

    @app.get("/outcomes", response_class=JSONResponse, summary="Outcome figures per site and pooled (JSON)")
    def outcomes(site: Site = None, stratify: Stratify = None, timepoint: Timepoint = 36.0) -> JSONResponse:
        report = outcomes_report(_cohort(store, site), timepoint, _stratify(stratify))
        return JSONResponse(report)

    @app.get("/outcomes.csv", response_class=Response, summary="Outcome figures as CSV")
    def outcomes_csv(site: Site = None, stratify: Stratify = None, timepoint: Timepoint = 36.0) -> Response:
        report = outcomes_report(_cohort(store, site), timepoint, _stratify(stratify))
        return Response(to_csv(report), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": 'attachment; filename="outcomes.csv"'})

    @app.get("/outcomes/km.{fmt}", response_class=Response, summary="Kaplan-Meier plot (png or svg)")
    def km(fmt: str, endpoint: Annotated[str, Query(pattern="^(os|rfs)$")] = "os", site: Site = None,
           stratify: Stratify = None, timepoint: Timepoint = 36.0) -> Response:
        if fmt not in ("png", "svg"):
            raise FHIRError(404, "not-found", f"plots are served as km.png or km.svg, not km.{fmt}")
        body = km_plot(_cohort(store, site), endpoint, _stratify(stratify), fmt, timepoint)
        return Response(body, media_type="image/png" if fmt == "png" else "image/svg+xml")
