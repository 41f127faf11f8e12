"""The Suzhou research-office workbook (issue 18's new example site): three sheets with Chinese headers,
decimal ages, follow-up in months without dates of death, several grafts, combined graft sources,
HLA written x/10, engraftment, conditioning, 22 adverse-event terms, CR with detectable MRD, subsequent
therapy, '-' and '<0.01', and a name column. Every figure of examples/suzhou/EXPECTED.md is asserted
through a real HTTP server on SQLite and PostgreSQL; no name from the workbook reaches any output."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from adapter.config import ROOT, Settings
from tests.conftest import EXAMPLES, posted
from tests.server import Server, _post_export

SITE, MAPPING = "suzhou", "research_workbook"
WORKBOOK = EXAMPLES / "suzhou" / "suzhou_research_workbook.xlsx"


def _expected(marker: str = "figures") -> dict[str, Any]:
    text = (EXAMPLES / "suzhou" / "EXPECTED.md").read_text(encoding="utf-8")
    block = re.search(rf"<!-- {marker}:begin -->\s*```json\n(.*?)```\s*<!-- {marker}:end -->", text, re.DOTALL)
    assert block, f"EXPECTED.md has no {marker} block"
    return json.loads(block.group(1))


EXPECTED = _expected()
#: the figures plans/suzhou.yaml adds (log-rank, Cox, reverse-KM follow-up), from the generator
EXPECTED_PLAN = _expected("plan")


def _names() -> set[str]:
    ws = openpyxl.load_workbook(WORKBOOK, read_only=True)["患者 Patients"]
    rows = ws.iter_rows(values_only=True)
    header = list(next(rows))
    names = {r[header.index("姓名 (Name)")] for r in rows}
    assert len(names) >= 25
    return names


NAMES = _names()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def suzhou(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    with posted(request.param, tmp_path_factory.mktemp("suzhou"), settings, [(SITE, MAPPING, WORKBOOK)]) as srv:
        yield srv


@pytest.fixture(scope="module")
def figures(suzhou: Server) -> dict[str, Any]:
    r = suzhou.client.get("/outcomes", params={"site": SITE, "timepoint": "12", "suppress": "false"})
    assert r.status_code == 200, r.text[:300]
    return r.json()["sites"][SITE]


def _same(actual: Any, expected: Any, where: str) -> None:
    """Equal, with rates to 1e-4 and confidence limits to 1e-3 (two computations of one estimate)."""
    if isinstance(expected, dict):
        for k, v in expected.items():
            assert k in actual, f"{where}.{k} missing"
            _same(actual[k], v, f"{where}.{k}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for a, e in zip(actual, expected, strict=True):
            assert a == pytest.approx(e, abs=1e-3), where
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, abs=1e-4), where
    else:
        assert actual == expected, where


def test_the_posted_workbook_maps_every_row(suzhou: Server) -> None:
    r = _post_export(suzhou.client, WORKBOOK, SITE, MAPPING)  # posting it again changes nothing
    assert r.status_code == 200, r.text[:300]
    report = json.loads(r.json()["entry"][-1]["response"]["outcome"]["issue"][0]["diagnostics"])  # the batch summary
    assert report["rowsRead"] == report["rowsMapped"] == 33 + 17 + 173, report
    assert report["rowsRejected"] == 0
    assert all(c.get("created", 0) == 0 and c.get("updated", 0) == 0 for c in report["resources"].values()), report


@pytest.mark.parametrize("figure", ["n", "sex", "status_at_start", "deaths", "relapse_or_progression", "therapies"])
def test_cohort_figures(figures: dict[str, Any], figure: str) -> None:
    _same(figures[figure], EXPECTED[figure], figure)


def test_decimal_ages_give_the_sheet_median_to_within_a_tenth_of_a_year(figures: dict[str, Any]) -> None:
    assert figures["age_decimal_years"]["n"] == EXPECTED["n"]
    assert figures["age_decimal_years"]["median"] == pytest.approx(EXPECTED["age_decimal_years_median"], abs=0.1)


def test_responses_with_cr_of_detectable_or_unknown_mrd(figures: dict[str, Any]) -> None:
    response = figures["response"]
    _same(response["counts"], EXPECTED["response_counts"], "response.counts")
    _same(response["cr_morphological"], EXPECTED["cr_morphological"], "cr_morphological")
    _same(response["cr"], EXPECTED["cr_mrd_negative"], "cr")
    by_status = response["by_status_at_start"]
    _same(by_status["refractory"]["cr_morphological"], EXPECTED["cr_morphological_refractory"], "refractory")
    _same(by_status["relapse"]["cr_morphological"], EXPECTED["cr_morphological_relapse"], "relapse")


def test_transplants_in_full(figures: dict[str, Any]) -> None:
    _same(figures["hsct"], EXPECTED["hsct"], "hsct")


def test_toxicity_by_term_and_grade(figures: dict[str, Any]) -> None:
    tox = figures["toxicity"]
    _same(tox["crs_any"], EXPECTED["crs_any"], "crs_any")
    assert tox["crs_by_worst_grade"] == EXPECTED["crs_by_worst_grade"]
    assert tox["worst_grade_by_event"] == EXPECTED["adverse_events_worst_grade"]
    assert len(tox["worst_grade_by_event"]) >= 15


@pytest.mark.parametrize("endpoint", ["os", "rfs"])
def test_kaplan_meier_at_12_months_excludes_the_death_without_a_date_and_says_so(figures: dict[str, Any], endpoint: str) -> None:
    km = figures["survival"][endpoint]
    _same({k: km[k] for k in ("n", "events", "survival", "ci95", "excluded")}, EXPECTED[f"{endpoint}_12_months"], endpoint)


def _all(srv: Server, rtype: str, **params: str) -> list[dict[str, Any]]:
    out, url, query = [], f"/{rtype}", {"_count": "1000", **params}
    while url:
        bundle = srv.client.get(url, params=query).json()
        out += [e["resource"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        query = {}
    return out


def test_fhir_alone_carries_deaths_grades_grafts_and_ages(suzhou: Server, figures: dict[str, Any]) -> None:
    """What a generic FHIR reader sees, without our Python: deaths on Patient.deceased[x] (three dated
    from follow-up months, one boolean), AdverseEvent.severity from the grade, two Procedures for the
    patients with a second graft, partial birth dates from decimal ages, censored quantities."""
    patients = _all(suzhou, "Patient", _site=SITE)
    assert len(patients) == 33 and all("name" not in p for p in patients)
    dated = [p for p in patients if "deceasedDateTime" in p]
    boolean = [p for p in patients if p.get("deceasedBoolean") is True]
    assert (len(dated), len(boolean)) == (3, 1) and len(dated) + len(boolean) == figures["deaths"]["count"]
    assert all(re.fullmatch(r"\d{4}-\d{2}", p["birthDate"]) for p in patients)  # to the month: approximate
    events = _all(suzhou, "AdverseEvent", _site=SITE)
    graded = [e for e in events if any(x["url"].endswith("/ae-grade") for x in e.get("extension", []))]
    assert graded and all((e.get("severity") or {}).get("coding") for e in graded)
    # every CTCAE v5.0 term carries its MedDRA code (NCI's term list, mappings/codes/ctcae_v5.yaml); the
    # three non-CTCAE terms (ICANS, acute GVHD, relapse) carry the project code alone
    meddra = {c["code"]: c["display"] for e in events for c in e["event"]["coding"] if c["system"] == "https://www.meddra.org"}
    assert meddra["10016558"] == "Fever" and meddra["10052015"] == "Cytokine release syndrome" and len(meddra) >= 18
    project_only = {c["code"] for e in events for c in e["event"]["coding"]
                    if len(e["event"]["coding"]) == 1 and c["system"].endswith("/adverse-event-term")}
    assert project_only <= {"icans", "acute-gvhd", "relapse", "death"}
    grafts = [p for p in _all(suzhou, "Procedure", _site=SITE) if any(pr.endswith("pedall-hsct") for pr in p["meta"]["profile"])]
    per_patient: dict[str, int] = {}
    for g in grafts:
        per_patient[g["subject"]["reference"]] = per_patient.get(g["subject"]["reference"], 0) + 1
    assert sorted(per_patient.values()).count(2) == EXPECTED["hsct"]["more_than_one_graft"]
    combined = [g for g in grafts if len(g.get("usedCode", [])) == 2]
    assert combined, "bone marrow + peripheral blood is two usedCode entries"
    observations = _all(suzhou, "Observation", _site=SITE)
    censored = [o for o in observations if (o.get("valueQuantity") or {}).get("comparator")]
    assert {o["valueQuantity"]["comparator"] for o in censored} >= {"<", ">"}  # '<0.01' MRD, '<5'/'>90' blasts


def test_no_name_from_the_workbook_in_any_output(suzhou: Server, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Names (the identifying column) never reach stored resources, the ingestion report, the facade
    (JSON, CSV, MeasureReport), a Bundle export, the CLI or the logs."""
    outputs = []
    with caplog.at_level(logging.DEBUG):
        outputs.append(_post_export(suzhou.client, WORKBOOK, SITE, MAPPING).text)
        for rtype in ("Patient", "Observation", "AdverseEvent", "Procedure", "MedicationAdministration"):
            outputs.append(json.dumps(_all(suzhou, rtype, _site=SITE), ensure_ascii=False))
        outputs.append(suzhou.client.get("/outcomes", params={"site": SITE, "suppress": "false"}).text)
        outputs.append(suzhou.client.get("/outcomes.csv", params={"site": SITE, "suppress": "false"}).text)
        outputs.append(suzhou.client.get("/Measure/blinatumomab-outcomes/$evaluate-measure").text)
        env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite3", "COLUMNS": "200"}
        for cmd in (["ingest", str(WORKBOOK), "--site", SITE, "--mapping", MAPPING], ["summary"],
                    ["export-bundle", "-o", f"{tmp_path}/all.json"], ["outcomes", "--site", SITE]):
            p = subprocess.run([sys.executable, "-m", "adapter", *cmd], capture_output=True, text=True, env=env,  # noqa: S603
                               cwd=ROOT, check=False)
            assert p.returncode == 0, p.stdout + p.stderr
            outputs.append(p.stdout + p.stderr)
        outputs.append((tmp_path / "all.json").read_text(encoding="utf-8"))
    outputs.append(caplog.text)
    text = "\n".join(outputs)
    assert "ZY2021080" in text or "rows read" in text  # the outputs are real
    assert not sorted(n for n in NAMES if n in text)


def test_every_resource_passes_the_r4_schema_the_r4b_model_our_profiles_and_core_invariants(suzhou: Server) -> None:
    from adapter.validation import get_validator
    from adapter.validation.validator import core_invariant_errors

    v = get_validator()
    resources = [r for t in ("Patient", "Observation", "AdverseEvent", "Procedure", "MedicationAdministration", "Condition")
                 for r in _all(suzhou, t, _site=SITE)]
    assert len(resources) > 500
    for r in resources:
        assert v.validate(r, full=True) == [], (r["resourceType"], r["id"])
        assert core_invariant_errors(r) == [], (r["resourceType"], r["id"])


def test_the_workbook_and_expected_md_are_what_the_generator_writes() -> None:
    """examples/suzhou/make_export.py computes the figures from its own table (not through the
    adapter): the committed workbook holds that table, and EXPECTED.md those figures."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_export", EXAMPLES / "suzhou" / "make_export.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = gen  # dataclasses resolve their annotations through the module
    try:
        spec.loader.exec_module(gen)
    finally:
        del sys.modules[spec.name]
    patients, grafts, events, figures = gen.build()
    assert figures == EXPECTED
    assert gen.plan_figures() == EXPECTED_PLAN
    wb = openpyxl.load_workbook(WORKBOOK, read_only=True)
    for title, rows in (("患者 Patients", patients), ("移植 HSCT", grafts), ("不良事件 AE", events)):
        stored = [list(r) for r in wb[title].iter_rows(min_row=2, values_only=True)]
        assert stored == rows, title
