"""SQL on FHIR v2: the official test suite (tests/sql_on_fhir/, every test of every file) on the
views compiled to SQL (adapter/views/sql.py), run on an embedded DuckDB and on a real PostgreSQL.
A test passes when the engine gives exactly the expected rows (as a multiset: the suite does not
fix row order), the expected column order, or an error where one is expected, as on the reference
runner (tests/test_views.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from adapter.views.engines import load_resources_postgresql, run_duckdb_resources, run_postgresql
from adapter.views.runner import ViewDefinitionError
from adapter.views.sql import SqlCompileError, compile_view
from tests.conftest import pg_database
from tests.test_views import CASES, _canonical


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    """A PostgreSQL database of its own, dropped afterwards (the suite fails without PostgreSQL)."""
    with pg_database("adapter_sof") as url:
        engine = create_engine(url)
        try:
            yield engine
        finally:
            engine.dispose()


def _run(engine: str, pg: Any, view: dict[str, Any], resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if engine == "duckdb":
        return run_duckdb_resources(view, resources)
    with pg.connect() as con:
        tx = con.begin()
        try:
            load_resources_postgresql(con, resources, "sof_resources")
            return run_postgresql(view, con, "sof_resources", where="")
        finally:
            tx.rollback()


@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
@pytest.mark.parametrize(("path", "k"), CASES)
def test_official_suite_compiled_to_sql(engine: str, path: Path, k: int, pg: Any) -> None:
    suite = json.loads(path.read_text(encoding="utf-8"))
    test = suite["tests"][k]
    if test.get("expectError"):
        # invalid views are refused when compiled; several values in a plain column and a where
        # path that is not Boolean fail the query, and come back as the runner's error
        with pytest.raises(ViewDefinitionError):
            _run(engine, pg, test["view"], suite["resources"])
        return
    rows = _run(engine, pg, test["view"], suite["resources"])
    if "expectColumns" in test:
        assert [c["name"] for c in compile_view(test["view"], engine).columns] == test["expectColumns"]
        assert all(list(r) == test["expectColumns"] for r in rows)
    if "expect" in test:
        assert _canonical(rows) == _canonical(test["expect"])


@pytest.mark.parametrize("engine", ["duckdb", "postgresql"])
def test_several_values_in_a_plain_column_fail_the_query_naming_it(engine: str, pg: Any) -> None:
    view = {"resource": "Patient", "select": [{"column": [{"name": "given", "path": "name.given"}]}]}
    with pytest.raises(ViewDefinitionError, match="^column 'given': several values"):
        _run(engine, pg, view, [{"resourceType": "Patient", "id": "p", "name": [{"given": ["A", "B"]}]}])
    assert _run(engine, pg, view, [{"resourceType": "Patient", "id": "p", "name": [{"given": ["A"]}]}]) == [{"given": "A"}]


def test_fhirpath_outside_the_compiled_subset_is_named() -> None:
    view = {"resource": "Patient", "select": [{"column": [{"name": "x", "path": "name.given.distinct()"}]}]}
    with pytest.raises(SqlCompileError, match=r"'name.given.distinct\(\)': the function distinct\(\) is not compiled to SQL"):
        compile_view(view, "duckdb")
    with pytest.raises(ValueError, match="unknown SQL dialect"):
        compile_view(view, "oracle")
