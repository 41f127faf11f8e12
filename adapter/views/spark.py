"""SQL on FHIR v2 ViewDefinitions compiled to Spark SQL (Apache Spark >= 4.0, ``VARIANT``).

The FHIRPath compiler is the one of :mod:`adapter.views.sql`; this module gives it Spark's
vocabulary (:class:`SparkSQL`: collections are ``array<variant>``, resources ``parse_json`` of
their NDJSON line, lambdas ``x -> ...``) and compiles the select tree without correlated
subqueries, which Spark restricts: each selection becomes an *expression* giving its rows as an
``array<struct<column...>>`` per resource, built with ``transform``/``flatten`` (the Cartesian
product of nested selections, ``forEach`` with the item's index as ``%rowIndex``, ``unionAll`` as
``concat``), and the query is ``SELECT inline(rows) FROM source WHERE ...``. Spark runs it the
same on ``local[2]`` and on a cluster.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from typing import Any

from adapter.views.runner import ViewDefinitionError
from adapter.views.sql import Dialect, SqlView, _FhirPath, _paths, _ViewCompiler


class SparkSQL(Dialect):
    """Spark SQL 4: FHIRPath collections as ``array<variant>``; errors by ``raise_error``."""

    name = "spark"
    empty = "CAST(array() AS array<variant>)"

    def q(self, text: str) -> str:
        # Spark reads backslash escapes in string literals
        return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def ident(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def first(self, c: str) -> str:
        return f"try_element_at({c}, 1)"

    def key(self, v: str, key: str) -> str:
        return f"try_variant_get({v}, {self.q('$[' + json.dumps(key) + ']')})"

    def let(self, value: str, var: str, body: str) -> str:
        return f"element_at(transform(array({value}), {var} -> {body}), 1)"

    def single(self, j: str) -> str:
        return f"(CASE WHEN ({j}) IS NULL THEN {self.empty} ELSE array({j}) END)"

    def member(self, x: str, key: str) -> str:
        as_array = "try_variant_get(m_, '$', 'array<variant>')"
        return self.let(self.key(x, key), "m_", f"CASE WHEN m_ IS NULL OR is_variant_null(m_) THEN {self.empty} "
                                                 f"WHEN {as_array} IS NOT NULL THEN {as_array} ELSE array(m_) END")

    def choice(self, x: str, keys: list[str]) -> str:
        names = "array(" + ", ".join(self.q(k) for k in keys) + ")"
        return (f"coalesce(map_values(map_filter(try_variant_get({x}, '$', 'map<string,variant>'), "
                f"(k_, v_) -> array_contains({names}, k_))), {self.empty})")

    def flatmap(self, c: str, var: str, body: str) -> str:
        return f"flatten(transform({c}, {var} -> {body}))"

    def map(self, c: str, var: str, body: str) -> str:
        return f"transform({c}, {var} -> {body})"

    def filter(self, c: str, var: str, cond: str) -> str:
        return f"filter({c}, {var} -> coalesce({cond}, false))"

    def count(self, c: str) -> str:
        return f"size({c})"

    def item(self, c: str, index_sql: str) -> str:
        return self.let(f"CAST({index_sql} AS INT)", "ix_", f"CASE WHEN ix_ >= 0 AND ix_ < size({c}) THEN array({c}[ix_]) "
                                                           f"ELSE {self.empty} END")

    def last(self, c: str) -> str:
        return f"(CASE WHEN size({c}) > 0 THEN array({c}[size({c}) - 1]) ELSE {self.empty} END)"

    def concat(self, a: str, b: str) -> str:
        return f"concat({a}, {b})"

    def contains(self, c: str, x: str) -> str:
        return f"exists({c}, y_ -> to_json(y_) = to_json({x}))"

    def jtype(self, x: str) -> str:
        return self.let(f"schema_of_variant({x})", "t_", "CASE WHEN t_ = 'STRING' THEN 'string' WHEN t_ = 'BOOLEAN' THEN 'boolean' "
                        "WHEN t_ LIKE 'OBJECT%' THEN 'object' WHEN t_ LIKE 'ARRAY%' THEN 'array' WHEN t_ = 'VOID' THEN 'null' "
                        "WHEN t_ IS NULL THEN NULL ELSE 'number' END")

    def text(self, x: str) -> str:
        return f"try_variant_get({x}, '$', 'string')"

    def num(self, x: str) -> str:
        return f"try_variant_get({x}, '$', 'decimal(38,12)')"

    def boolean(self, x: str) -> str:
        return f"try_variant_get({x}, '$', 'boolean')"

    def from_text(self, s: str) -> str:
        return f"CAST(CAST({s} AS STRING) AS VARIANT)"

    def from_num(self, n: str) -> str:
        return f"CAST(CAST({n} AS DOUBLE) AS VARIANT)"

    def from_int(self, n: str) -> str:
        return f"CAST(CAST({n} AS BIGINT) AS VARIANT)"

    def from_bool(self, b: str) -> str:
        return f"CAST(CAST({b} AS BOOLEAN) AS VARIANT)"

    def literal(self, value: Any) -> str:
        return f"parse_json({self.q(json.dumps(value))})"

    def join(self, c: str, sep: str) -> str:
        return f"array_join(transform({c}, y_ -> try_variant_get(y_, '$', 'string')), {sep})"

    def last_day(self, year_month: str) -> str:
        return f"date_format(last_day(to_date({year_month} || '-01')), 'dd')"

    def matches(self, s: str, pattern: str) -> str:
        return f"({s} RLIKE {self.q(pattern)})"

    def raise_(self, message: str, row_value: str) -> str:
        return f"raise_error({self.q(message)})"

    def several(self, c: str, column: str) -> str:
        msg = f"column {column!r}: several values but the column is not a collection (collection: true)"
        return self.let(c, "col_v", f"CASE WHEN size(col_v) > 1 THEN CAST({self.raise_(msg, 'col_v')} AS VARIANT) "
                                    f"ELSE try_element_at(col_v, 1) END")

    def as_array(self, c: str) -> str:
        return c


class _SparkViewCompiler(_ViewCompiler):
    """The select tree as one expression of rows per resource (no correlated subqueries)."""

    def __init__(self, view: Mapping[str, Any]) -> None:
        super().__init__(view, SparkSQL())
        self._lambdas = itertools.count()

    def compile(self) -> SqlView:
        d, rt = self.d, self.checked.resource
        conds = []
        fp = _FhirPath(d, self.constants, self._vars)
        for i, w in enumerate(self.view.get("where") or []):
            e = self.fp(w["path"], "res.r", rt, "0")
            if e.kind == "bool":
                conds.append(f"coalesce({e.sql}, false)")
                continue
            x = d.first("w_v")
            bad = d.raise_(f"where[{i}].path {w['path']!r} must give a boolean", "w_v")
            conds.append("coalesce(" + d.let(e.sql, "w_v", f"CASE WHEN size(w_v) = 0 THEN false WHEN size(w_v) = 1 AND "
                         f"{d.jtype(x)} = 'boolean' THEN {d.boolean(x)} ELSE CAST({bad} AS BOOLEAN) END") + ", false)")
        del fp
        rows, names = self.rows({"select": self.view["select"]}, "res.r", rt, "0")
        outer = ", ".join(f"to_json(v.{d.ident(n)}) AS {d.ident(n)}" for n in names)
        sql = (f"SELECT {outer} FROM (SELECT inline({rows}) FROM {{source}} AS res"
               + (f" WHERE {' AND '.join(conds)}" if conds else "") + ") AS v")
        return SqlView(rt, self.checked.columns, sql, d.name)

    def rows(self, s: Mapping[str, Any], item: str, ftype: str | None, index: str) -> tuple[str, list[str]]:
        """``array<struct<...>>``: the rows of selection ``s`` for the single item ``item``."""
        d = self.d
        fp = _FhirPath(d, self.constants, self._vars)
        iterate = next((k for k in ("forEach", "forEachOrNull", "repeat") if k in s), None)
        if not iterate:
            return self.rows_for(s, item, ftype, index)
        if iterate == "repeat":
            foci, item_type = self.repeat(s["repeat"], item, ftype, index), None
        else:
            e = self.fp(s[iterate], item, ftype, index)
            foci, item_type = fp.coll(e).sql, e.ftype
        k = next(self._lambdas)
        f, i = f"f{k}_", f"i{k}_"
        body, names = self.rows_for(s, f, item_type, i)
        out = f"flatten(transform({foci}, ({f}, {i}) -> {body}))"
        if iterate == "forEachOrNull":
            nulls = ", ".join(f"{d.q(n)}, {d.literal(0) if p == '%rowIndex' else self._null(n, s)}"
                              for n, p in zip(names, _paths(s, names), strict=True))
            fv = f"fo{k}_"
            out = d.let(foci, fv, f"CASE WHEN size({fv}) = 0 THEN array(named_struct({nulls})) "
                                  f"ELSE {out.replace(foci, fv, 1)} END")
        return out, names

    def _null(self, name: str, s: Mapping[str, Any]) -> str:
        from adapter.views.runner import _all_columns

        col = next((c for c in _all_columns(s) if c["name"] == name), {})
        return "CAST(NULL AS array<variant>)" if col.get("collection") is True else "CAST(NULL AS VARIANT)"

    def rows_for(self, s: Mapping[str, Any], item: str, ftype: str | None, index: str) -> tuple[str, list[str]]:
        d = self.d
        fp = _FhirPath(d, self.constants, self._vars)
        parts: list[tuple[str, list[str]]] = []
        cols = s.get("column") or []
        if cols:
            fields = []
            for c in cols:
                coll = fp.coll(self.fp(c["path"], item, ftype, index)).sql
                fields.append(f"{d.q(c['name'])}, {d.as_array(coll) if c.get('collection') is True else d.several(coll, c['name'])}")
            parts.append((f"array(named_struct({', '.join(fields)}))", [c["name"] for c in cols]))
        for sub in s.get("select") or []:
            parts.append(self.rows(sub, item, ftype, index))
        if s.get("unionAll"):
            branches = [self.rows(b, item, ftype, index) for b in s["unionAll"]]
            parts.append((f"concat({', '.join(b for b, _ in branches)})", branches[0][1]))
        if not parts:
            return "array(named_struct('_empty', CAST(NULL AS VARIANT)))", []
        acc, names = parts[0]
        for sql, more in parts[1:]:
            k = next(self._lambdas)
            a, b = f"a{k}_", f"b{k}_"
            fields = ", ".join([f"{d.q(n)}, {a}.{d.ident(n)}" for n in names] + [f"{d.q(n)}, {b}.{d.ident(n)}" for n in more])
            acc = f"flatten(transform({acc}, {a} -> transform({sql}, {b} -> named_struct({fields}))))"
            names = names + more
        return acc, names


def compile_view_spark(view: Mapping[str, Any]) -> SqlView:
    """``view`` compiled to one Spark SQL query over ``{source}`` (a relation with a ``VARIANT``
    column ``r``, one resource of the view's type per row), each output column as JSON text.
    Raises as :func:`adapter.views.sql.compile_view`."""
    return _SparkViewCompiler(view).compile()


# ========================================================================================= running


def spark_session(master: str = "local[2]", app_name: str = "pedall-views", **conf: str) -> Any:
    """A SparkSession (``local[2]`` by default; a cluster's master URL in production), with the UI
    off and few shuffle partitions for small data. pyspark must be installed (requirements)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    # a repeat unrolled to REPEAT_DEPTH levels nests lambdas deeper than the analyzer's default
    # 100 resolution passes allow
    defaults = {"spark.ui.enabled": "false", "spark.sql.shuffle.partitions": "4", "spark.sql.analyzer.maxIterations": "1000"}
    for k, v in {**defaults, **conf}.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def load_resources_spark(spark: Any, resources: Iterable[Mapping[str, Any]], name: str = "fhir") -> None:
    """``resources`` as temporary view ``name(r VARIANT)``."""
    from pyspark.sql.types import StringType, StructField, StructType

    df = spark.createDataFrame([(json.dumps(r),) for r in resources], StructType([StructField("value", StringType())]))
    df.selectExpr("parse_json(value) AS r").createOrReplaceTempView(name)


def load_export_spark(spark: Any, export_dir: str, name: str = "fhir") -> None:
    """Every ``*.ndjson`` file of a Bulk Data export folder as temporary view ``name(r VARIANT)``,
    read by Spark (one line per resource)."""
    spark.read.text(f"{export_dir.rstrip('/')}/*.ndjson").selectExpr("parse_json(value) AS r").createOrReplaceTempView(name)


def run_spark(view: Mapping[str, Any], spark: Any, name: str = "fhir") -> list[dict[str, Any]]:
    """The rows of ``view`` over temporary view ``name(r VARIANT)``, as dicts of JSON values in
    column order. Raises ViewDefinitionError (invalid view, several values in a plain column, a
    where path that is not Boolean), SqlCompileError, or Spark's own errors."""
    from adapter.views.engines import _engine_error

    compiled = compile_view_spark(view)
    source = f"(SELECT r FROM {name} WHERE try_variant_get(r, '$.resourceType', 'string') = {SparkSQL().q(compiled.resource)})"
    try:
        fetched = spark.sql(compiled.over(source)).collect()
    except Exception as exc:  # noqa: BLE001  (py4j and pyspark raise many classes)
        err = _engine_error(exc)
        if isinstance(err, ViewDefinitionError):
            raise err from None
        raise
    names = [c["name"] for c in compiled.columns]
    return [{n: (json.loads(v) if v is not None else None) for n, v in zip(names, row, strict=True)} for row in fetched]
