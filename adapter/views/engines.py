"""Running compiled ViewDefinitions (adapter/views/sql.py) on DuckDB and PostgreSQL.

- DuckDB, embedded: over FHIR resources in memory, over a Bulk Data export folder (NDJSON files,
  read with DuckDB's own ``read_json_objects``), or over an SQLite store's ``resources`` table.
- PostgreSQL: over the store's ``resources`` table (its JSON text cast to ``jsonb``), or over
  resources loaded into a temporary table.

Every engine returns rows as lists of dicts in column order with JSON values, as the reference
runner does, so that the three can be compared value for value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from adapter.views.runner import ViewDefinitionError
from adapter.views.sql import DuckDB, PostgreSQL, SqlView, compile_view


def _plain(v: Any) -> Any:
    """JSON numbers as Python numbers: PostgreSQL's numeric arrives as Decimal."""
    if isinstance(v, Decimal):
        return int(v) if v == v.to_integral_value() and v.as_tuple().exponent >= 0 else float(v)
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


_OURS = re.compile(r"(column '[^']*': several values[^\"\n]*|where\[\d+\]\.path .*? must give a boolean)")


def _engine_error(exc: Exception) -> Exception:
    """A failure the compiled SQL raised on purpose (several values in a plain column, a where
    path that is not Boolean) as the ViewDefinitionError the reference runner raises; any other
    engine error as it is."""
    m = _OURS.search(str(exc))
    return ViewDefinitionError(m.group(1)) if m else exc


def _rows(compiled: SqlView, cursor_rows: Iterable[Sequence[Any]], text: bool) -> list[dict[str, Any]]:
    """Rows as dicts; ``text``: the engine returns JSON as text (DuckDB), else decoded (psycopg)."""
    names = [c["name"] for c in compiled.columns]
    if text:
        return [{n: (json.loads(v) if v is not None else None) for n, v in zip(names, row, strict=True)} for row in cursor_rows]
    return [{n: _plain(v) for n, v in zip(names, row, strict=True)} for row in cursor_rows]


# ======================================================================================= DuckDB


def duckdb_connection() -> Any:
    """A new in-memory DuckDB connection (the ``json`` extension is built in, nothing is downloaded)."""
    import duckdb

    return duckdb.connect(":memory:")


def load_resources_duckdb(con: Any, resources: Iterable[Mapping[str, Any]], table: str = "fhir") -> None:
    """``resources`` (FHIR JSON objects) into table ``table(resource JSON)``, replacing it."""
    import pandas as pd

    con.execute(f"CREATE OR REPLACE TABLE {table} (resource JSON)")
    batch = pd.DataFrame({"resource": [json.dumps(r) for r in resources]}, dtype=object)
    if len(batch):  # one columnar insert (executemany binds row by row: minutes for 10^5 resources)
        con.register("_resources_batch", batch)
        try:
            con.execute(f"INSERT INTO {table} SELECT CAST(resource AS JSON) FROM _resources_batch")
        finally:
            con.unregister("_resources_batch")


def load_export_duckdb(con: Any, export_dir: str | Path, table: str = "fhir") -> int:
    """Every ``*.ndjson`` file of a Bulk Data export folder into ``table(resource JSON)``, read by
    DuckDB itself. Returns the number of resources. Raises ReaderError (CLI exit 3) for a missing
    folder, a folder without NDJSON, a line that is not JSON or not a resource, naming the file."""
    import duckdb

    from adapter.errors import ReaderError

    folder = Path(export_dir)
    if not folder.is_dir():
        raise ReaderError(f"{folder}: not a folder")
    files = sorted(str(p) for p in folder.glob("*.ndjson"))
    if not files:
        raise ReaderError(f"{folder}: no .ndjson file")
    con.execute(f"CREATE OR REPLACE TABLE {table} (resource JSON)")
    for f in files:
        try:
            con.execute(f"INSERT INTO {table} SELECT json AS resource FROM read_json_objects(?, format = 'newline_delimited')",
                        [f])
        except duckdb.Error as exc:
            raise ReaderError(f"{Path(f).name}: not NDJSON ({str(exc).splitlines()[0][:200]})") from None
    missing = con.execute(f"SELECT count(*) FROM {table} WHERE json_type(resource) <> 'OBJECT' OR "
                          f"resource ->> 'resourceType' IS NULL").fetchone()[0]
    if missing:
        raise ReaderError(f"{folder}: {missing} line(s) are not FHIR resources (no resourceType)")
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def run_duckdb(view: Mapping[str, Any], con: Any, table: str = "fhir") -> list[dict[str, Any]]:
    """The rows of ``view`` over ``table(resource JSON)`` on DuckDB connection ``con``. Raises
    :class:`~adapter.views.runner.ViewDefinitionError` (invalid view), ``SqlCompileError``
    (FHIRPath the compiler does not translate) or ``duckdb.Error`` (evaluation, e.g. several values
    in a non-collection column)."""
    compiled = compile_view(view, "duckdb")
    source = f"(SELECT resource AS r FROM {table} WHERE resource ->> 'resourceType' = {DuckDB().q(compiled.resource)})"
    import duckdb

    try:
        fetched = con.execute(compiled.over(source)).fetchall()
    except duckdb.Error as exc:
        raise _engine_error(exc) from None
    return _rows(compiled, fetched, text=True)


def run_duckdb_resources(view: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``view`` over ``resources`` in a throwaway in-memory DuckDB."""
    con = duckdb_connection()
    try:
        load_resources_duckdb(con, resources)
        return run_duckdb(view, con)
    finally:
        con.close()


# =================================================================================== PostgreSQL


def run_postgresql(view: Mapping[str, Any], connection: Any, table: str = "resources",
                   where: str = "NOT deleted") -> list[dict[str, Any]]:
    """The rows of ``view`` on PostgreSQL over ``table`` (a text or jsonb column ``resource``; by
    default the store's table, current versions only). ``connection`` is a SQLAlchemy connection.
    Raises as :func:`run_duckdb` does (``sqlalchemy.exc.DBAPIError`` for evaluation errors)."""
    from sqlalchemy import text

    compiled = compile_view(view, "postgresql")
    cond = f" AND {where}" if where else ""
    source = (f"(SELECT CAST(resource AS jsonb) AS r FROM {table} WHERE CAST(resource AS jsonb) ->> 'resourceType' = "
              f"{PostgreSQL().q(compiled.resource)}{cond})")
    from sqlalchemy.exc import DBAPIError

    try:
        # the planner's estimates for nested jsonb set functions are high enough to switch its JIT
        # on, which costs about a second per query and gains nothing here: off, for this transaction
        connection.execute(text("SELECT set_config('jit', 'off', true)"))
        fetched = connection.execute(text(compiled.over(source).replace(":", r"\:"))).fetchall()
    except DBAPIError as exc:
        raise _engine_error(exc) from None
    return _rows(compiled, fetched, text=False)


def load_resources_postgresql(connection: Any, resources: Iterable[Mapping[str, Any]], table: str) -> None:
    """``resources`` into a new table ``table(resource jsonb)`` (dropped first)."""
    from sqlalchemy import text

    connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    connection.execute(text(f"CREATE TABLE {table} (resource jsonb NOT NULL)"))
    rows = [{"r": json.dumps(r)} for r in resources]
    if rows:
        connection.execute(text(f"INSERT INTO {table} (resource) VALUES (CAST(:r AS jsonb))"), rows)


def run_views_duckdb(views: Mapping[str, Any], export_dir: str | Path) -> dict[str, list[dict[str, Any]]]:
    """The rows of every view (name -> ViewDefinition JSON, or anything with a ``view`` attribute
    holding it, such as a :class:`~adapter.views.runner.CompiledView`) over a Bulk Data export
    folder, on one in-memory DuckDB that reads the NDJSON files itself."""
    con = duckdb_connection()
    try:
        load_export_duckdb(con, export_dir)
        return {name: run_duckdb(getattr(v, "view", v), con) for name, v in views.items()}
    finally:
        con.close()


def run_views_resources(views: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The rows of every view over ``resources`` (e.g. a store's, streamed), loaded once into an
    in-memory DuckDB; a view whose FHIRPath is outside the compiled subset (SqlCompileError) runs
    on the reference runner over the same resources. Raises ViewDefinitionError as both do."""
    from adapter.views.runner import run_view
    from adapter.views.sql import SqlCompileError

    kept = list(resources)
    con = duckdb_connection()
    try:
        load_resources_duckdb(con, kept)
        out = {}
        for name, v in views.items():
            view = getattr(v, "view", v)
            try:
                compile_view(view, "duckdb")
            except SqlCompileError:
                out[name] = run_view(view, kept)
                continue
            out[name] = run_duckdb(view, con)
        return out
    finally:
        con.close()


#: the engines ``adapter verify-figures --engine`` can use
ENGINES = ("duckdb", "spark", "reference")


def run_views_spark(views: Mapping[str, Any], export_dir: str | Path, master: str = "local[2]") -> dict[str, list[dict[str, Any]]]:
    """The rows of every view over a Bulk Data export folder on Spark (``master``: ``local[2]`` or
    a cluster URL), the views compiled to Spark SQL (adapter/views/spark.py)."""
    from adapter.errors import ReaderError
    from adapter.views.spark import load_export_spark, run_spark, spark_session

    folder = Path(export_dir)
    if not folder.is_dir() or not any(folder.glob("*.ndjson")):
        raise ReaderError(f"{folder}: not a folder of .ndjson files")
    spark = spark_session(master)
    load_export_spark(spark, str(folder.resolve()))
    return {name: run_spark(getattr(v, "view", v), spark) for name, v in views.items()}


def view_rows(view: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``view`` over ``resources``: compiled to SQL on a throwaway in-memory DuckDB, or,
    for FHIRPath outside the compiled subset (SqlCompileError), on the reference runner. Raises
    ViewDefinitionError as both do."""
    from adapter.views.runner import run_view
    from adapter.views.sql import SqlCompileError

    try:
        compile_view(view, "duckdb")
    except SqlCompileError:
        return run_view(view, resources)
    return run_duckdb_resources(view, resources)
