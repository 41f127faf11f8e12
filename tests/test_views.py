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
