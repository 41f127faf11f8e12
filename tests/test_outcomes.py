"""The outcomes facade reproduces the figures of examples/*/EXPECTED.md, computed through the API
(a real uvicorn server, on SQLite and PostgreSQL) from the FHIR resources posted as exports."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from adapter.cli import app as cli
from tests.server import Server

TOL = 0.001  # EXPECTED.md gives percentages to one decimal


def _outcomes(api: Server, **params: Any) -> dict[str, Any]:
    """The figures unsuppressed (the site's own view; suppression is tested in test_privacy)."""
    r = api.client.get("/outcomes", params={"suppress": "false", **params})
    assert r.status_code == 200, r.text
    return r.json()


def _p(fig: dict[str, Any]) -> tuple[int, int]:
    return fig["count"], fig["n"]


def test_hito_figures(api: Server) -> None:
    f = _outcomes(api, site="hito")["sites"]["hito"]
    # A2
    assert f["n"] == 9
    assert f["sex"] == {"female": 5, "male": 4}
    age = f["age_years"]
    assert (age["mean"], age["sd"], age["median"], age["min"], age["max"]) == (10.22, 4.68, 10.0, 1.0, 17.0)
    ex = f["exposure"]
    assert ex["patients_by_cycles"] == {"1": 4, "2": 2, "3": 3} and ex["cycles_total"] == 17
    mrd = f["mrd"]
    assert _p(mrd["pre_positive"]) == (8, 9)  # HITO reads exactly 0.01 % as negative
    assert _p(mrd["after_last_strict"]) == (6, 9) and _p(mrd["after_last_inclusive"]) == (9, 9)
    assert _p(mrd["after_cycle1_strict"]) == (4, 9) and _p(mrd["after_cycle1_inclusive"]) == (6, 9)
    assert f["status_at_start"] == {"refractory": 4, "relapse": 5}
    assert _p(f["hsct"]) == (9, 9) and f["hsct"]["hla_match"] == {"haploidentical": 7, "identical": 2}
    assert f["hsct"]["stem_cell_source"] == {"bone-marrow": 1, "pbsc": 8}
    # A3
    tox = f["toxicity"]
    assert _p(tox["crs_any"]) == (3, 9) and tox["crs_by_worst_grade"] == {"1": 1, "2": 2}
    assert tox["picu_admissions"] == 2
    assert _p(f["deaths"]) == (4, 9) and f["deaths"]["related_to_blinatumomab"] == 0
    assert f["deaths"]["causes"] == {"hemorrhagic-syndrome": 1, "pjp-pneumonia": 2, "septic-shock": 1}
    # A4: KM at 36 months from cycle-1 start
    assert f["survival"]["os"]["survival"] == pytest.approx(0.556, abs=TOL)
    assert f["survival"]["rfs"]["survival"] == pytest.approx(0.556, abs=TOL)
    assert f["survival"]["os"]["definition"]["origin"] == "start of blinatumomab"
    # B: survivors last seen 40.5 … 48.8 months after cycle-1 start
    fu = f["follow_up"]["survivors_from_start_months"]
    assert (fu["min"], fu["max"]) == pytest.approx((40.5, 48.8), abs=0.05)
    assert f["follow_up"]["reverse_km_median_months"] == pytest.approx(44.8, abs=0.1)
    # every interval contains its estimate
    lo, hi = f["survival"]["os"]["ci95"]
    assert lo < f["survival"]["os"]["survival"] < hi


def test_huanl_figures(api: Server) -> None:
    f = _outcomes(api, site="huanl", stratify="hsct")["sites"]["huanl"]
    assert f["n"] == 12 and f["sex"] == {"female": 4, "male": 8}
    assert f["age_years"]["median"] == 4.5 and f["age_years"]["infants_under_1"] == 3
    assert f["age_years"]["min"] == pytest.approx(7 / 12, abs=0.01) and f["age_years"]["max"] == 15
    assert f["status_at_start"] == {"first-relapse": 7, "later-relapse": 2, "refractory": 3}
    assert _p(f["mrd"]["pre_above_1_percent"]) == (8, 12)
    cd = f["exposure"]["course_days"]
    assert (cd["median"], cd["min"], cd["max"]) == (20, 11, 21)
    assert _p(f["exposure"]["entirely_outpatient"]) == (9, 12)
    assert f["toxicity"]["patients_with_event"]["neutropenia"] == 3
    r = f["response"]
    assert {k: v for k, v in r["counts"].items() if v} == {"cr-mrd-negative": 5, "mrd-clearance": 4, "pr": 1, "pd": 2}
    assert set(r["counts"]) == {"cr-mrd-negative", "mrd-clearance", "cr-mrd-positive", "cr-mrd-unknown", "pr", "nr", "pd",
                                "not-evaluable", "not-assessed"}
    assert r["cr_morphological"]["count"] == r["cr"]["count"] == 9
    assert _p(r["mrd_negative_after"]) == (9, 12)
    assert _p(r["cr_mrd_negative_among_above_1_percent"]) == (5, 8)
    assert _p(r["pr_among_above_1_percent"]) == (1, 8) and _p(r["pd_among_above_1_percent"]) == (2, 8)
    assert _p(r["mrd_clearance_among_mrd_positive_below_1_percent"]) == (4, 4)
    assert _p(f["hsct"]) == (10, 12) and f["hsct"]["hla_match"] == {"haploidentical": 10}
    assert _p(f["toxicity"]["crs_any"]) == (4, 12) and f["toxicity"]["crs_by_worst_grade"] == {"1": 3, "2": 1}
    assert _p(f["deaths"]) == (5, 12)
    # A3: KM at 36 months from the start of blinatumomab
    s = f["survival"]
    assert s["os"]["survival"] == pytest.approx(0.533, abs=TOL)
    assert s["rfs"]["survival"] == pytest.approx(0.438, abs=TOL)
    assert s["rfs"]["strata"]["hsct"]["survival"] == pytest.approx(0.525, abs=TOL)
    assert s["rfs"]["strata"]["no-hsct"]["survival"] == pytest.approx(0.0, abs=TOL)
    assert s["rfs"]["logrank"]["strata"] == ["hsct", "no-hsct"] and 0 <= s["rfs"]["logrank"]["p"] < 0.05
    assert "progression" in s["rfs"]["definition"]["events"]
    # A2: median follow-up, diagnosis to last contact or death: 33 (10-76) months
    dx = f["follow_up"]["from_diagnosis_months"]
    assert (dx["median"], dx["min"], dx["max"]) == pytest.approx((33.0, 10.0, 76.0), abs=0.05)
    # B: from the start among the 7 survivors: median 33.0 (10.1-65.1); the reverse KM agrees
    alive = f["follow_up"]["survivors_from_start_months"]
    assert alive["n"] == 7
    assert (alive["median"], alive["min"], alive["max"]) == pytest.approx((33.0, 10.1, 65.1), abs=0.05)
    assert f["follow_up"]["reverse_km_median_months"] == pytest.approx(33.0, abs=0.05)


def test_huanl_vials_and_drug_cost(api: Server) -> None:
    """A2: 75 vials used against 132 for standard 28-day courses (57 fewer, 43.2 %); 75 x 35,000 MXN
    = 142,663 USD at 18.4 MXN/USD against 251,087 USD (EXPECTED.md C8), from MedicationDispense."""
    v = _outcomes(api, site="huanl")["sites"]["huanl"]["exposure"]["vials"]
    assert v["patients_with_record"] == 12
    assert (v["used"]["total"], v["used"]["median"], v["used"]["min"], v["used"]["max"]) == (75, 5.5, 3, 16)
    std = v["standard_course"]
    assert (std["total"], std["median"], std["min"], std["max"]) == (132, 9, 7, 25)
    assert v["saved"] == 57 and round(v["saving_share"] * 100, 1) == 43.2
    assert v["cost"]["by_currency"]["MXN"] == {"used": 2_625_000, "standard_course": 4_620_000}
    usd = v["cost"]["usd"]
    assert round(usd["used"]) == 142_663 and round(usd["standard_course"]) == 251_087
    assert round(usd["saving_share"] * 100, 1) == 43.2
    # the vials are stored FHIR: one MedicationDispense per patient, searchable like any resource
    bundle = api.client.get("/MedicationDispense", params={"_summary": "count"}).json()
    assert bundle["total"] >= 12
    # HITO records no vials: no figure is invented for it, and the pooled cost is HUANL's alone
    rep = _outcomes(api)
    assert rep["sites"]["hito"]["exposure"]["vials"] == {"patients_with_record": 0}
    assert rep["pooled"]["exposure"]["vials"]["cost"]["usd"] == usd


def test_pooled_is_the_union_of_sites(api: Server) -> None:
    rep = _outcomes(api, stratify="site")
    assert set(rep["sites"]) == {"hito", "huanl"}
    pooled = rep["pooled"]
    assert pooled["n"] == 21 and _p(pooled["hsct"]) == (19, 21) and _p(pooled["deaths"]) == (9, 21)
    assert set(pooled["survival"]["os"]["strata"]) == {"hito", "huanl"}
    for site in ("hito", "huanl"):
        assert pooled["survival"]["os"]["strata"][site]["survival"] == rep["sites"][site]["survival"]["os"]["survival"]


def test_csv_and_plots(api: Server) -> None:
    r = api.client.get("/outcomes.csv", params={"site": "huanl"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    hsct = next(x for x in rows if x["group"] == "huanl" and x["figure"] == "hsct")
    assert (hsct["count"], hsct["n"]) == ("10", "12")
    os_row = next(x for x in rows if x["group"] == "huanl" and x["figure"] == "survival.os")
    assert float(os_row["value"]) == pytest.approx(0.533, abs=TOL)
    png = api.client.get("/outcomes/km.png", params={"endpoint": "rfs", "stratify": "hsct"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    svg = api.client.get("/outcomes/km.svg", params={"site": "hito"})
    assert svg.status_code == 200 and b"<svg" in svg.content and b"At risk" in svg.content


@pytest.mark.parametrize(("url", "status"), [
    ("/outcomes?site=nowhere", 404), ("/outcomes?stratify=colour", 400), ("/outcomes?timepoint=-3", 400),
    ("/outcomes?timepoint=soon", 400), ("/outcomes/km.gif", 404), ("/outcomes/km.png?endpoint=pfs", 400),
])
def test_outcomes_bad_input(api: Server, url: str, status: int) -> None:
    r = api.client.get(url)
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"


def test_outcomes_reveal_no_identity(api: Server) -> None:
    """Coordinator-facing output: no record number, name or resource id of any patient."""
    text = api.client.get("/outcomes", params={"stratify": "site"}).text + api.client.get("/outcomes.csv").text
    for p in api.store.iter_resources("Patient"):
        assert p["id"] not in text
        for ident in p.get("identifier", []):
            assert ident["value"] not in text


def test_cli_outcomes(api: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapter.config import get_settings

    monkeypatch.setenv("ADAPTER_DATABASE_URL", api.store.url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        table = runner.invoke(cli, ["outcomes"])
        assert table.exit_code == 0, table.output
        assert "53.3%" in table.output and "55.6%" in table.output
        out = runner.invoke(cli, ["outcomes", "--site", "huanl", "--format", "json"])
        assert out.exit_code == 0
        assert json.loads(out.output)["sites"]["huanl"]["survival"]["rfs"]["survival"] == pytest.approx(0.438, abs=TOL)
        bad = runner.invoke(cli, ["outcomes", "--format", "xml"])
        assert bad.exit_code == 2
    finally:
        get_settings.cache_clear()


def _group(report: dict[str, Any], gid: str) -> dict[str, Any]:
    return next(g for g in report["group"] if g["id"] == gid)


def _count(pops: list[dict[str, Any]], code: str) -> int:
    return next(p["count"] for p in pops if p["code"]["coding"][0]["code"] == code)


def _stratum(group: dict[str, Any], site: str) -> dict[str, Any]:
    return next(s for s in group["stratifier"][0]["stratum"] if s["value"]["text"] == site)


def test_evaluate_measure_carries_the_same_figures(api: Server) -> None:
    from adapter.validation import get_validator
    from adapter.validation.validator import model_errors

    surv = api.client.get("/Measure/blinatumomab-survival/$evaluate-measure")
    assert surv.status_code == 200 and surv.headers["content-type"].startswith("application/fhir+json")
    mr = surv.json()
    # a MeasureReport is not one of our profiled resources: the R4 schema and the R4B model apply
    assert get_validator().schema.errors(mr, reference=True) == [] and model_errors(mr) == []
    assert mr["measure"].endswith("/Measure/blinatumomab-survival") and mr["type"] == "summary"
    os_group = _group(mr, "os")
    assert _count(os_group["population"], "initial-population") == 21
    assert _stratum(os_group, "hito")["measureScore"]["value"] == pytest.approx(0.556, abs=TOL)
    assert _stratum(os_group, "huanl")["measureScore"]["value"] == pytest.approx(0.533, abs=TOL)
    assert _stratum(_group(mr, "rfs"), "huanl")["measureScore"]["value"] == pytest.approx(0.438, abs=TOL)
    pooled = _outcomes(api)["pooled"]
    assert os_group["measureScore"]["value"] == pooled["survival"]["os"]["survival"]
    ci = os_group["extension"][0]["valueRange"]
    assert [ci["low"]["value"], ci["high"]["value"]] == pooled["survival"]["os"]["ci95"]

    rates = api.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure").json()
    hsct = _group(rates, "hsct")
    assert (_count(hsct["population"], "numerator"), _count(hsct["population"], "denominator")) == (19, 21)
    hu = _stratum(hsct, "huanl")
    assert (_count(hu["population"], "numerator"), _count(hu["population"], "denominator")) == (10, 12)
    clearance = _stratum(_group(rates, "mrd-clearance"), "huanl")
    assert (_count(clearance["population"], "numerator"), _count(clearance["population"], "denominator")) == (4, 4)
    # the period selects patients by the start of blinatumomab: HITO started 2019-2020, HUANL 2020-2024
    later = api.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure", params={"periodStart": "2021-01-01"}).json()
    assert _count(_group(later, "hsct")["population"], "initial-population") == 11  # HUANL but row 7 (2020)
    assert later["period"]["start"] == "2021-01-01"
    measure = api.client.get("/Measure/blinatumomab-outcomes").json()
    assert {g["id"] for g in measure["group"]} == {g["id"] for g in rates["group"]}


def test_measures_say_what_they_count() -> None:
    """Each published Measure names the Library of its plan (plans/default.yaml); every group is a
    figure of the plan and every population's criteria are the plan's own SQL (no %denominator
    numerator), as adapter/outcomes/measure.py builds them; the Library depends on the views the
    plan reads. The Measures and the Library are valid R4 (official schema, R4B model)."""
    from adapter.analysis.plan import load_plan
    from adapter.analysis.verify import DEFAULT_PLAN
    from adapter.config import ROOT
    from adapter.outcomes.measure import LIBRARY, PLAN_URL, load_measures, measure_groups
    from adapter.validation import get_validator
    from adapter.validation.validator import model_errors

    plan = load_plan(DEFAULT_PLAN)
    figures = {f["id"] for f in plan["figures"]}
    measures = load_measures(str(ROOT / "profiles"))
    assert set(measures) == {"blinatumomab-outcomes", "blinatumomab-survival"}
    library = json.loads((ROOT / "profiles" / "Library-pedall-default-plan.json").read_text(encoding="utf-8"))
    assert library["url"] == LIBRARY and library["content"][0]["url"] == PLAN_URL
    views = {json.loads(p.read_text(encoding="utf-8"))["url"] for p in (ROOT / "views").glob("*.json")}
    assert {a["resource"] for a in library["relatedArtifact"]} == views
    for m in [*measures.values(), library]:
        # R4 binds Expression.language extensibly ("text/cql | text/fhirpath | application/x-fhir-query | etc.",
        # Metadata Types); the official JSON schema lists the three as an enum, so application/sql (RFC 6922, the
        # media type SQL on FHIR's SQLQuery Library uses) is its one complaint, accepted for that reason
        complaints = get_validator().schema.errors(m, reference=True)
        assert all(e.expression.endswith(".criteria.language") and "'application/sql' is not one of" in e.message
                   for e in complaints), (m["id"], complaints[:3])
        assert model_errors(m) == [], m["id"]
    assert get_validator().schema.errors(library, reference=True) == []
    for m in measures.values():
        assert m["library"] == [LIBRARY] and m["group"] == measure_groups(plan, m)
        for g in m["group"]:
            assert g["code"]["text"] in figures
            for p in g["population"]:
                c = p["criteria"]
                assert c["language"] == "application/sql" and "%" not in c["expression"]
                assert c["reference"].startswith(PLAN_URL + "#")
        counted = [tuple(p["criteria"]["expression"] for p in g["population"][1:]) for g in m["group"]]
        assert len(set(counted)) == len(counted)  # each group counts its own thing


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_measure_report_follows_the_stored_resources(backend: str, tmp_path: Any, settings: Any) -> None:
    """$evaluate-measure runs the default plan over the views of what is stored now: a Patient whose
    death is removed (PUT) is no longer counted in the next report, and the KM time point and the
    period are the request's."""
    from tests.conftest import EXAMPLE_FILES, posted

    with posted(backend, tmp_path, settings, EXAMPLE_FILES[2:]) as srv:  # HUANL
        before = srv.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure").json()
        assert _count(_group(before, "death")["population"], "numerator") == 5
        dead = next(e["resource"] for e in srv.client.get("/Patient", params={"_count": 50}).json()["entry"]
                    if "deceasedDateTime" in e["resource"])
        del dead["deceasedDateTime"]
        assert srv.client.put(f"/Patient/{dead['id']}", json=dead).status_code == 200
        after = srv.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure").json()
        assert _count(_group(after, "death")["population"], "numerator") == 4
        one_year = srv.client.get("/Measure/blinatumomab-survival/$evaluate-measure", params={"timepoint": 12}).json()
        three = srv.client.get("/Measure/blinatumomab-survival/$evaluate-measure").json()
        assert _group(one_year, "os")["measureScore"]["value"] > _group(three, "os")["measureScore"]["value"]
        period = srv.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure",
                                params={"periodStart": "2024-01-01", "periodEnd": "2024-12-31"}).json()
        assert _count(_group(period, "hsct")["population"], "initial-population") == 3  # the three 2024 starts
        _assert_rows_follow_writes(srv)


def _assert_rows_follow_writes(srv: Any) -> None:
    """The view rows a StorePlan keeps are brought up to date after a write by running the views
    over the changed resources only, and equal a run over the whole store: after the PUT above, a
    DELETE, and an ingestion of another site's file."""
    from adapter.analysis.store_plan import StorePlan
    from adapter.api.outcomes_routes import store_plan
    from tests.conftest import EXAMPLE_FILES

    def canonical(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
        return {name: sorted(json.dumps(r, sort_keys=True, default=str) for r in rs) for name, rs in rows.items()}

    kept = store_plan(srv.store)
    assert kept.last_run is not None and kept.last_run[0] == "incremental" and kept.last_run[1] == 1  # the PUT
    assert canonical(kept.rows()) == canonical(StorePlan(srv.store).rows())
    graft = next(e["resource"] for e in srv.client.get("/Procedure", params={"_count": 50}).json()["entry"]
                 if "234336002" in json.dumps(e["resource"]["code"]))
    assert srv.client.delete(f"/Procedure/{graft['id']}").status_code in (200, 204)
    after_delete = kept.rows()
    assert kept.last_run == ("incremental", 1)
    assert all(r["id"] != f"Procedure/{graft['id']}" for r in after_delete["pedall_hsct"])
    assert canonical(after_delete) == canonical(StorePlan(srv.store).rows())
    site, mapping, path = EXAMPLE_FILES[0]
    with open(path, "rb") as fh:
        assert srv.client.post("/$ingest", files={"file": (Path(path).name, fh)},
                               data={"site": site, "mapping": mapping}).status_code == 200
    grown = kept.rows()
    assert kept.last_run[0] == "full"  # most of the store is new: one pass over it
    assert canonical(grown) == canonical(StorePlan(srv.store).rows()) and len(grown["pedall_patient"]) > 12


@pytest.mark.parametrize(("url", "status"), [
    ("/Measure/nothing/$evaluate-measure", 404), ("/Measure/nothing", 404),
    ("/Measure/blinatumomab-outcomes/$evaluate-measure?periodStart=last-year", 400),
])
def test_evaluate_measure_bad_input(api: Server, url: str, status: int) -> None:
    r = api.client.get(url)
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"


def _svg_texts(svg: str) -> list[str]:
    import xml.etree.ElementTree as ET  # noqa: S405  (our own server's SVG)

    return [(e.text or "").strip() for e in ET.fromstring(svg).iter() if e.tag.endswith("}text")]  # noqa: S314


def test_km_plots_suppress_small_numbers_at_risk_like_the_tables(api: Server) -> None:
    """Network views of a KM plot show a number at risk from 1 to 4 as "<5", as the outcome tables
    do; a site's own view (``site=``) shows them."""
    network = _svg_texts(api.client.get("/outcomes/km.svg", params={"stratify": "site"}).text)
    own = _svg_texts(api.client.get("/outcomes/km.svg", params={"stratify": "site", "site": "huanl"}).text)
    small = {"1", "2", "3", "4"}
    assert "<5" in network and not small & set(network)
    assert small & set(own) and "<5" not in own
    explicit = _svg_texts(api.client.get("/outcomes/km.svg", params={"stratify": "site", "suppress": "false"}).text)
    assert small & set(explicit)
