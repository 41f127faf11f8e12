"""SQL on FHIR v2: the official test suite (tests/sql_on_fhir/, every test of every file) on the
reference runner (adapter/views/runner.py). A test passes when the view gives exactly the expected
rows (as a multiset: the suite does not fix row order), the expected column order, or an error
where one is expected."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from adapter.views.runner import CompiledView, ViewDefinitionError, run_view

SUITE = Path(__file__).resolve().parent / "sql_on_fhir"
FILES = sorted(p for p in SUITE.glob("*.json") if p.name != "tests.schema.json")
CASES = [pytest.param(path, k, id=f"{path.stem}::{test['title']}")
         for path in FILES for k, test in enumerate(json.loads(path.read_text(encoding="utf-8"))["tests"])]


def _canonical(rows: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_the_whole_suite_is_here_and_well_formed() -> None:
    schema = json.loads((SUITE / "tests.schema.json").read_text(encoding="utf-8"))
    for path in FILES:
        jsonschema.validate(json.loads(path.read_text(encoding="utf-8")), schema)
    assert len(FILES) == 22 and len(CASES) == 134


@pytest.mark.parametrize(("path", "k"), CASES)
def test_official_suite(path: Path, k: int) -> None:
    suite = json.loads(path.read_text(encoding="utf-8"))
    test = suite["tests"][k]
    if test.get("expectError"):
        with pytest.raises(ViewDefinitionError):
            run_view(test["view"], suite["resources"])
        return
    rows = run_view(test["view"], suite["resources"])
    if "expectColumns" in test:
        assert [c["name"] for c in CompiledView(test["view"]).columns] == test["expectColumns"]
        assert all(list(r) == test["expectColumns"] for r in rows)
    if "expect" in test:
        assert _canonical(rows) == _canonical(test["expect"])


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(ViewDefinitionError, match="resource is required"):
        CompiledView({"select": [{"column": [{"name": "id", "path": "id"}]}]})
    with pytest.raises(ViewDefinitionError, match=r"select\[0\].column\[0\].path: '@@' is not valid FHIRPath"):
        CompiledView({"resource": "Patient", "select": [{"column": [{"name": "id", "path": "@@"}]}]})
    with pytest.raises(ViewDefinitionError, match="%site is not a constant"):
        CompiledView({"resource": "Patient", "select": [{"column": [{"name": "s", "path": "%site"}]}]})
    view = CompiledView({"resource": "Patient", "select": [{"column": [{"name": "given", "path": "name.given"}]}]})
    with pytest.raises(ViewDefinitionError, match="'given': several values"):
        list(view.rows([{"resourceType": "Patient", "name": [{"given": ["A", "B"]}]}]))


# ------------------------------------------------------------------ our views over our export

@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Any) -> Any:
    """Every example export posted as `make run` ingests them, and a system $export of it
    downloaded over HTTP into a folder, as a study team would receive it."""
    from tests.conftest import ALL_EXAMPLE_FILES, posted

    with posted(request.param, tmp_path_factory.mktemp("views"), settings, ALL_EXAMPLE_FILES) as srv:
        r = srv.client.get("/$export", headers={"Accept": "application/fhir+json", "Prefer": "respond-async"})
        assert r.status_code == 202, r.text
        status = r.headers["content-location"]
        for _ in range(600):
            done = srv.client.get(status)
            if done.status_code == 200:
                break
            assert done.status_code == 202
            import time

            time.sleep(0.1)
        folder = tmp_path_factory.mktemp("export")
        for k, o in enumerate(done.json()["output"]):
            body = srv.client.get(o["url"])
            assert body.status_code == 200
            (folder / f"{k:03d}.{o['type']}.ndjson").write_bytes(body.content)
        srv.export_folder = folder  # type: ignore[attr-defined]
        yield srv


def test_our_views_are_valid_view_definitions() -> None:
    """views/*.json: each a ViewDefinition resource with a url, name, title and description, that
    the runner accepts; every column has a name, a FHIR type and reads no adapter-only data."""
    from adapter.config import ROOT
    from adapter.views.figures import VIEWS, load_views

    views = load_views(ROOT / "views")
    assert set(VIEWS) <= set(views)
    for path in sorted((ROOT / "views").glob("*.json")):
        v = json.loads(path.read_text(encoding="utf-8"))
        assert v["resourceType"] == "ViewDefinition" and v["name"] == path.stem
        assert v["url"].endswith("/" + v["name"]) and v["title"] and len(v["description"]) > 40
        for c in views[v["name"]].columns:
            assert c["type"], (path.name, c["name"])


def test_figures_from_the_views_over_a_system_export_equal_the_facades(network: Any) -> None:
    """The headline figures recomputed from a system $export with the views alone (no adapter
    code beyond counting rows) equal /outcomes, site by site and pooled. The three gaps a Spark
    reader found are closed: deaths on Patient.deceased[x] (cdmx-b's included), CRS grade >= 3
    from the ae-grade extension, responses as Observations (HITO's derived ones included)."""
    from adapter.config import ROOT
    from adapter.readers.ndjson import iter_export
    from adapter.views.figures import compare, figures_from_views, load_views, run_views

    recomputed = figures_from_views(run_views(load_views(ROOT / "views"), iter_export(network.export_folder)))
    report = network.client.get("/outcomes", params={"suppress": "false"}).json()
    assert compare(recomputed, report) == []
    assert set(recomputed["sites"]) == set(report["sites"]) and len(recomputed["sites"]) == 8
    pooled = recomputed["pooled"]
    assert pooled["deaths"] == report["pooled"]["deaths"]["count"] and recomputed["sites"]["cdmx-b"]["deaths"] > 0
    assert pooled["crs_grade_3_plus"] > 0
    assert recomputed["sites"]["hito"]["response"].get("not-assessed", 0) == 0  # derived responses are in FHIR


def test_verify_figures_cli_agrees_and_names_a_difference(network: Any, tmp_path: Path) -> None:
    """`adapter verify-figures EXPORT --server URL`: exit 0 when every figure agrees; an export in
    which one Patient lost its death gives exit 8 and names the site, the figure and both values."""
    from typer.testing import CliRunner

    from adapter.cli import app as cli

    runner = CliRunner()
    ok = runner.invoke(cli, ["verify-figures", str(network.export_folder), "--server", network.base])
    assert ok.exit_code == 0, ok.output
    assert "every figure agrees" in ok.output
    edited = tmp_path / "edited"
    edited.mkdir()
    changed = None
    for path in sorted(network.export_folder.glob("*.ndjson")):
        lines = path.read_text(encoding="utf-8").splitlines()
        out = []
        for line in lines:
            r = json.loads(line)
            if changed is None and r["resourceType"] == "Patient" and "deceasedDateTime" in r \
                    and r["managingOrganization"]["reference"] == "Organization/huanl":
                del r["deceasedDateTime"]
                changed = r["id"]
            out.append(json.dumps(r))
        (edited / path.name).write_text("\n".join(out) + "\n", encoding="utf-8")
    assert changed is not None
    bad = runner.invoke(cli, ["verify-figures", str(edited), "--server", network.base, "--format", "json"])
    assert bad.exit_code == 8, bad.output
    assert "huanl: deaths: views 4, facade 5" in bad.output and "pooled: deaths" in bad.output
    assert runner.invoke(cli, ["verify-figures", str(tmp_path / "missing"), "--server", network.base]).exit_code == 3
