"""Dashboard routes (see the package docstring). Pages:

* ``/ui/outcomes?timepoint=M``: per-site and pooled table (the same figures and small-cell
  suppression as ``GET /outcomes``), KM curves by site with numbers at risk (the
  ``/outcomes/km.svg`` plots), CSV and PNG downloads.
* ``/ui/ingestions``: the last ingestions per site (rows read, mapped, rejected);
  ``/ui/ingestions/{id}``: one ingestion's row issues (file, sheet, row, column, value, reason).
* ``/ui/subscriptions``: each Subscription's status, last delivery, backlog and last error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode, urlparse

from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from adapter.api.fhir_http import FHIRError
from adapter.api.security import require
from adapter.config import Settings
from adapter.store import Store
from adapter.store.schema import subscription_events

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
TIMEPOINTS = (6.0, 12.0, 24.0, 36.0, 60.0)
#: ingestions listed per site
PER_SITE = 10
#: The sign-in form's anti-forgery token (double submit: the cookie and the form field must match).
CSRF_COOKIE = "adapter_ui_csrf"


def add_ui_routes(app: FastAPI, store: Store, settings: Settings) -> None:
    """Register the dashboard (before the generic FHIR routes)."""
    from adapter.api.outcomes_routes import _cohort, _suppressed, store_plan
    from adapter.outcomes import outcomes_report
    from adapter.outcomes.render import outcome_table
    from adapter.spec.loader import load_drug_costs

    @app.get("/ui", include_in_schema=False)
    def ui() -> Response:
        return RedirectResponse("/ui/outcomes", status_code=302)

    def _login_form(request: Request, error: str | None, status: int = 200) -> Response:
        """The sign-in page, with a fresh anti-forgery token in a hidden field and in a cookie
        (double submit, OWASP CSRF Prevention Cheat Sheet): a sign-in form posted from another site
        cannot know it."""
        import secrets

        csrf = secrets.token_urlsafe(24)
        out = TEMPLATES.TemplateResponse(request, "login.html", {"title": "Sign in", "page": "login", "error": error,
                                                                 "csrf": csrf}, status_code=status)
        out.set_cookie(CSRF_COOKIE, csrf, max_age=1800, httponly=True, samesite="strict", path="/ui/login",
                       secure=request.url.scheme == "https")
        return out

    @app.get("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    def login_page(request: Request) -> Response:
        if not settings.auth_enabled:
            return RedirectResponse("/ui/outcomes", status_code=303)
        return _login_form(request, None)

    @app.post("/ui/login", response_class=HTMLResponse, include_in_schema=False)
    async def login(request: Request) -> Response:
        """Check a pasted access token and keep it in the dashboard's cookie (HttpOnly,
        SameSite=Strict, Secure over https, expiring with the token)."""
        import secrets
        import time
        from urllib.parse import parse_qsl

        from adapter.api.security import UI_COOKIE, audience, token_key
        from adapter.auth.tokens import TokenError, verify_access_token
        from adapter.store.security import ClientRegistry

        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace")))
        token = form.get("token", "").strip()
        base = audience(settings, request.scope)
        origin = request.headers.get("origin")
        own = (settings.base_url or str(request.base_url)).rstrip("/")
        own_origin = own.split("/", 3)[0] + "//" + own.split("/", 3)[2] if "://" in own else own
        expected = request.cookies.get(CSRF_COOKIE, "")
        if (origin and origin.rstrip("/") != own_origin) or not expected or not secrets.compare_digest(
                expected, form.get("csrf", "")):
            # login CSRF: a form on another site must not sign this browser in to someone else's session
            return _login_form(request, "Not signed in: the sign-in form did not come from this page; try again.", 403)
        try:
            who = verify_access_token(token, token_key(settings), base)
            client = ClientRegistry(store).get(who.client_id)
            if client is None or client.revoked:
                raise TokenError("invalid_token", "the client is unknown or revoked")
            import jwt

            expires = int(jwt.decode(token, options={"verify_signature": False})["exp"])
        except TokenError as exc:
            return _login_form(request, f"Not signed in: {exc.message}.", 401)
        out = RedirectResponse("/ui/outcomes" if who.allows("outcomes", "MeasureReport") else "/ui/ingestions"
                               if who.allows("ingest") else "/ui/subscriptions", status_code=303)
        out.set_cookie(UI_COOKIE, token, max_age=max(1, expires - int(time.time())), httponly=True, samesite="strict",
                       secure=base.startswith("https://"), path="/")
        out.delete_cookie(CSRF_COOKIE, path="/ui/login")
        return out

    @app.post("/ui/logout", include_in_schema=False)
    def logout() -> Response:
        from adapter.api.security import UI_COOKIE

        out = RedirectResponse("/ui/login", status_code=303)
        out.delete_cookie(UI_COOKIE, path="/")
        return out

    @app.get("/ui/outcomes", response_class=HTMLResponse, include_in_schema=False)
    def outcomes_page(request: Request, timepoint: Annotated[float, Query(gt=0, le=600)] = 36.0) -> Response:
        who = require(request, "outcomes", "MeasureReport")
        forced = True if who.role == "coordinator" else None
        report = _suppressed(outcomes_report(_cohort(store, None), timepoint, drug_costs=load_drug_costs(settings.mappings_dir)),
                             None, forced, settings)
        plan = store_plan(store).result(timepoint, suppress_below=settings.small_cell_threshold)  # as the report: suppressed
        columns, rows = outcome_table(report, plan)
        q = urlencode({"timepoint": f"{timepoint:g}"})
        km = {f"{e}_{fmt}": f"/outcomes/km.{fmt}?endpoint={e}&stratify=site&{q}" for e in ("os", "rfs") for fmt in ("svg", "png")}
        return TEMPLATES.TemplateResponse(request, "outcomes.html", {
            "title": "Outcomes", "page": "outcomes", "columns": columns, "rows": rows, "timepoint": timepoint,
            "timepoints": sorted({*TIMEPOINTS, timepoint}), "suppressed": True, "threshold": settings.small_cell_threshold,
            "csv_url": f"/outcomes.csv?{q}", "json_url": f"/outcomes?{q}", **km})

    @app.get("/ui/ingestions", response_class=HTMLResponse, include_in_schema=False)
    def ingestions_page(request: Request) -> Response:
        scope = require(request, "ingest").site_scope
        sites = [scope] if scope else store.ingestion_sites()
        rows = [r for site in sites for r in store.ingestion_reports(site, newest=PER_SITE)]
        rows.sort(key=lambda r: r["started"], reverse=True)
        return TEMPLATES.TemplateResponse(request, "ingestions.html", {"title": "Ingestions", "page": "ingestions",
                                                                       "ingestions": rows})

    @app.get("/ui/ingestions/{iid}", response_class=HTMLResponse, include_in_schema=False)
    def ingestion_page(request: Request, iid: str) -> Response:
        report = store.ingestion_report(iid, require(request, "ingest").site_scope)
        if report is None:
            raise FHIRError(404, "not-found", f"no ingestion {iid[:40]}")
        return TEMPLATES.TemplateResponse(request, "ingestion.html", {
            "title": f"Ingestion of {report['started'][:19]} ({report['site']})", "page": "ingestions", "r": report,
            "issues": report.get("rowIssues", [])})

    @app.get("/ui/subscriptions", response_class=HTMLResponse, include_in_schema=False)
    def subscriptions_page(request: Request) -> Response:
        site = require(request, "subscription-op", "Subscription").site_scope
        subs = []
        se = subscription_events
        with store.engine.connect() as conn:
            for res in store.iter_resources("Subscription", site=site):
                sid = res["id"]
                backlog = conn.execute(select(func.count()).select_from(se).where(se.c.subscription_id == sid,
                                                                                  se.c.delivered.is_(None))).scalar()
                last = conn.execute(select(func.max(se.c.delivered)).where(se.c.subscription_id == sid)).scalar()
                err = conn.execute(select(se.c.last_error).where(se.c.subscription_id == sid, se.c.delivered.is_(None),
                                                                 se.c.last_error.is_not(None))
                                   .order_by(se.c.event_number).limit(1)).scalar()
                criteria = res.get("criteria", "")
                subs.append({"id": sid, "status": res.get("status", ""), "criteria": criteria,
                             "host": urlparse((res.get("channel") or {}).get("endpoint", "")).netloc,  # never the path or headers
                             "last_delivery": last, "backlog": backlog or 0, "last_error": err or res.get("error")})
        return TEMPLATES.TemplateResponse(request, "subscriptions.html", {"title": "Subscriptions", "page": "subscriptions",
                                                                          "subscriptions": subs})
