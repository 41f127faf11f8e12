"""SQL on FHIR v2 ViewDefinitions compiled to SQL, once, for DuckDB and PostgreSQL.

A view becomes one ``SELECT`` over a relation ``source(r)`` holding one FHIR resource of the view's
type per row as JSON (DuckDB ``JSON``, PostgreSQL ``jsonb``). The select tree maps to SQL as the
specification's processing algorithm describes it (``StructureDefinition-ViewDefinition-notes.md``,
"Process(S, N)"): each ``select`` is a ``LATERAL`` subquery, nested selections are cross joined
(the Cartesian product), ``forEach`` unnests its foci ``WITH ORDINALITY`` (giving ``%rowIndex``),
``forEachOrNull`` adds a row of nulls when there are none, ``unionAll`` is ``UNION ALL`` and
``repeat`` unrolls its paths to :data:`REPEAT_DEPTH` levels.

FHIRPath is compiled from the parse tree of fhirpathpy's grammar (the same parser the reference
runner uses). Every FHIRPath value is a *collection*: a ``JSON[]`` list on DuckDB, a ``jsonb``
array on PostgreSQL; Boolean operators yield SQL booleans (``NULL`` = empty), FHIRPath's
three-valued logic being SQL's. Supported: member navigation (choice elements ``value[x]`` by
their suffix), indexers, ``where``, ``exists``, ``empty``, ``first``, ``last``, ``count``, ``not``,
``ofType``, ``extension``, ``join``, ``replace``, ``lowBoundary``/``highBoundary``,
``getResourceKey``, ``getReferenceKey``, ``=``/``!=``/``<``/``<=``/``>``/``>=``, ``and``/``or``/
``xor``/``implies``, ``+``/``-``/``*``/``/``/``&``, ``|``, literals, ``%constants``, ``%rowIndex``
and ``$this``. Anything else raises :class:`SqlCompileError` naming the expression, so the caller
can fall back to the reference runner (:mod:`adapter.views.runner`), which is the oracle these
compilers are tested against on the official suite (tests/test_views_sql.py).
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fhirpathpy.parser import parse as parse_fhirpath

from adapter.views.runner import CompiledView, ViewDefinitionError

#: ``repeat`` is unrolled to this many levels (a Questionnaire nests items deeper rarely)
REPEAT_DEPTH = 8


class SqlCompileError(ViewDefinitionError):
    """A valid ViewDefinition using FHIRPath this compiler does not translate (the message names
    the expression and the construct). The reference runner can still run the view."""


def _fhir_types() -> tuple[frozenset[str], dict[str, str], frozenset[str]]:
    from fhirpathpy.models import models

    m = models["r4"]
    return (frozenset(t for v in m["choiceTypePaths"].values() for t in v), m["path2Type"],
            frozenset(m["choiceTypePaths"]))


#: the data types a choice element ``x[x]`` can take in R4, as key suffixes (``valueQuantity``)
CHOICE_SUFFIXES, _PATH2TYPE, _CHOICE_PATHS = _fhir_types()
_CHOICE_NAMES = frozenset(p.rsplit(".", 1)[-1] for p in _CHOICE_PATHS)
_PRIMITIVES = {"boolean", "integer", "decimal", "string", "code", "id", "uri", "url", "canonical", "oid",
               "uuid", "markdown", "base64Binary", "date", "dateTime", "instant", "time", "positiveInt",
               "unsignedInt", "integer64"}
_NUMERIC = {"integer", "decimal", "positiveInt", "unsignedInt", "integer64"}


@dataclass(frozen=True)
class Expr:
    """A compiled FHIRPath expression: ``sql`` is a collection (``kind='coll'``) or an SQL boolean
    (``kind='bool'``); ``ftype`` the FHIR type of its items when known (``date``, ``HumanName``)."""

    sql: str
    kind: str = "coll"
    ftype: str | None = None
    #: for a member navigation ``src.name``: (src, name), so that ``ofType(T)`` reads ``name<T>``
    member_of: tuple[Expr, str] | None = None


# ====================================================================================== dialects


class Dialect:
    """The SQL an engine needs for FHIRPath collections of JSON values."""

    name = ""

    def q(self, text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    def ident(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    # the primitives DuckDB and Spark SQL spell alike; PostgreSQL overrides the ones it spells otherwise

    def replace(self, s: str, a: str, b: str) -> str:
        return f"replace({s}, {a}, {b})"

    def regex_replace(self, s: str, pattern: str, repl: str) -> str:
        return f"regexp_replace({s}, {self.q(pattern)}, {self.q(repl)})"

    def regex_extract(self, s: str, pattern: str, group: int) -> str:
        return f"nullif(regexp_extract({s}, {self.q(pattern)}, {group}), '')"

    def half_unit(self, scale: str) -> str:
        """Half a unit of the last decimal place kept, ``scale`` digits after the point (FHIRPath boundaries)."""
        return f"(CAST(5 AS DECIMAL(38, 12)) / power(10, {scale} + 1))"


class DuckDB(Dialect):
    """DuckDB (>= 1.3): collections are ``JSON[]`` lists, lambdas ``lambda x: ...``."""

    name = "duckdb"
    empty = "CAST([] AS JSON[])"

    def first(self, c: str) -> str:
        return f"({c})[1]"

    def key(self, v: str, key: str) -> str:
        """The raw JSON value of ``key`` of object ``v`` (NULL when absent)."""
        return f"json_extract({v}, {self.q('$.' + json.dumps(key))})"

    def matches(self, s: str, pattern: str) -> str:
        return f"regexp_matches({s}, {self.q(pattern)})"

    def single(self, j: str) -> str:
        return f"(CASE WHEN ({j}) IS NULL THEN {self.empty} ELSE [CAST({j} AS JSON)] END)"

    def member(self, x: str, key: str) -> str:
        # one parse of the (possibly large) item, then the small value is inspected
        j = f"json_extract({x}, {self.q('$.' + json.dumps(key))})"
        return (f"list_transform([{j}], lambda m_: CASE WHEN m_ IS NULL OR json_type(m_) = 'NULL' THEN {self.empty} "
                f"WHEN json_type(m_) = 'ARRAY' THEN json_extract(m_, '$[*]') ELSE [m_] END)[1]")

    def let(self, value: str, var: str, body: str) -> str:
        """``body`` with ``var`` bound to ``value``, evaluated once."""
        return f"list_transform([{value}], lambda {var}: {body})[1]"

    def choice(self, x: str, keys: list[str]) -> str:
        """The values of whichever of ``keys`` object ``x`` has (a choice element), as a collection."""
        names = "[" + ", ".join(self.q(k) for k in keys) + "]"
        return (f"(CASE WHEN json_type({x}) = 'OBJECT' THEN list_transform(list_filter(json_keys({x}), "
                f"lambda k: list_contains({names}, k)), lambda k: json_extract({x}, '$.\"' || k || '\"')) "
                f"ELSE {self.empty} END)")

    def flatmap(self, c: str, var: str, body: str) -> str:
        return f"flatten(list_transform({c}, lambda {var}: {body}))"

    def map(self, c: str, var: str, body: str) -> str:
        return f"list_transform({c}, lambda {var}: {body})"

    def filter(self, c: str, var: str, cond: str) -> str:
        return f"list_filter({c}, lambda {var}: coalesce({cond}, false))"

    def count(self, c: str) -> str:
        return f"len({c})"

    def item(self, c: str, index_sql: str) -> str:
        """The item at 0-based ``index_sql``, as a collection of 0 or 1."""
        return f"coalesce({c}[({index_sql}) + 1:({index_sql}) + 1], {self.empty})"

    def last(self, c: str) -> str:
        return f"coalesce({c}[-1:], {self.empty})"

    def concat(self, a: str, b: str) -> str:
        return f"list_concat({a}, {b})"

    def contains(self, c: str, x: str) -> str:
        return f"list_contains(list_transform({c}, lambda y: CAST(y AS VARCHAR)), CAST({x} AS VARCHAR))"

    def jtype(self, x: str) -> str:
        """'string' | 'number' | 'boolean' | 'object' | 'array' | 'null'."""
        return (f"(CASE json_type({x}) WHEN 'VARCHAR' THEN 'string' WHEN 'BOOLEAN' THEN 'boolean' "
                f"WHEN 'OBJECT' THEN 'object' WHEN 'ARRAY' THEN 'array' WHEN 'NULL' THEN 'null' ELSE 'number' END)")

    def text(self, x: str) -> str:
        return f"({x} ->> '$')"

    def num(self, x: str) -> str:
        return f"TRY_CAST({x} ->> '$' AS DECIMAL(38, 12))"

    def boolean(self, x: str) -> str:
        return f"TRY_CAST({x} ->> '$' AS BOOLEAN)"

    def from_text(self, s: str) -> str:
        return f"to_json(CAST({s} AS VARCHAR))"

    def from_num(self, n: str) -> str:
        return f"CAST(CAST({n} AS DOUBLE) AS JSON)"

    def from_int(self, n: str) -> str:
        return f"to_json(CAST({n} AS BIGINT))"

    def from_bool(self, b: str) -> str:
        return f"to_json(CAST({b} AS BOOLEAN))"

    def literal(self, value: Any) -> str:
        return f"CAST({self.q(json.dumps(value))} AS JSON)"

    def join(self, c: str, sep: str) -> str:
        return f"array_to_string(list_transform({c}, lambda y: y ->> '$'), {sep})"

    def last_day(self, year_month: str) -> str:
        return f"strftime(last_day(CAST({year_month} || '-01' AS DATE)), '%d')"

    def unnest(self, c: str, alias: str) -> str:
        """FROM item: one row per item, columns ``f`` (the item) and ``i`` (0-based)."""
        return f"(SELECT unnest(l.x) AS f, unnest(range(len(l.x))) AS i FROM (SELECT {c} AS x) AS l) AS {alias}"

    def raise_(self, message: str, row_value: str) -> str:
        """An SQL expression that fails the query with ``message`` when evaluated (``row_value``,
        an expression of the row, keeps planners from evaluating it early)."""
        return f"error({self.q(message)})"

    def several(self, c: str, column: str) -> str:
        msg = self.q(f"column {column!r}: several values but the column is not a collection (collection: true)")
        return self.let(c, "col_v", f"(CASE WHEN len(col_v) > 1 THEN error({msg}) ELSE col_v[1] END)")

    def as_array(self, c: str) -> str:
        return f"to_json({c})"

    def resource_source(self, table: str, resource_type: str) -> str:
        return f"(SELECT CAST(resource AS JSON) AS r FROM {table} WHERE resource ->> 'resourceType' = {self.q(resource_type)})"


class PostgreSQL(Dialect):
    """PostgreSQL (>= 12): collections are ``jsonb`` arrays, iterated with ``jsonb_array_elements``."""

    name = "postgresql"
    empty = "'[]'::jsonb"

    def __init__(self) -> None:
        self._n = itertools.count()

    def first(self, c: str) -> str:
        return f"(({c}) -> 0)"

    def key(self, v: str, key: str) -> str:
        return f"({v} -> {self.q(key)})"

    def half_unit(self, scale: str) -> str:
        return f"(5::numeric / power(10::numeric, {scale} + 1))"

    def matches(self, s: str, pattern: str) -> str:
        return f"({s} ~ {self.q(pattern)})"

    def _alias(self) -> str:
        return f"e{next(self._n)}"

    def single(self, j: str) -> str:
        return f"(CASE WHEN ({j}) IS NULL THEN {self.empty} ELSE jsonb_build_array({j}) END)"

    def member(self, x: str, key: str) -> str:
        k = self.q(key)
        return (f"(CASE jsonb_typeof({x} -> {k}) WHEN 'array' THEN {x} -> {k} WHEN 'null' THEN {self.empty} "
                f"ELSE {self.single(f'{x} -> {k}')} END)")

    def let(self, value: str, var: str, body: str) -> str:
        return f"(SELECT {body} FROM (SELECT {value} AS {var}) AS {self._alias()})"

    def choice(self, x: str, keys: list[str]) -> str:
        a = self._alias()
        names = "ARRAY[" + ", ".join(self.q(k) for k in keys) + "]"
        return (f"(SELECT coalesce(jsonb_agg({a}.value), {self.empty}) FROM jsonb_each(CASE WHEN jsonb_typeof({x}) = 'object' "
                f"THEN {x} ELSE '{{}}'::jsonb END) AS {a} WHERE {a}.key = ANY({names}))")

    def flatmap(self, c: str, var: str, body: str) -> str:
        a, b = self._alias(), self._alias()
        return (f"(SELECT coalesce(jsonb_agg({b}.v ORDER BY {a}.o, {b}.o), {self.empty}) FROM jsonb_array_elements({c}) "
                f"WITH ORDINALITY AS {a}({var}, o) CROSS JOIN LATERAL jsonb_array_elements({body}) WITH ORDINALITY AS {b}(v, o))")

    def map(self, c: str, var: str, body: str) -> str:
        a = self._alias()
        return (f"(SELECT coalesce(jsonb_agg({body} ORDER BY {a}.o), {self.empty}) FROM jsonb_array_elements({c}) "
                f"WITH ORDINALITY AS {a}({var}, o))")

    def filter(self, c: str, var: str, cond: str) -> str:
        a = self._alias()
        return (f"(SELECT coalesce(jsonb_agg({var} ORDER BY {a}.o), {self.empty}) FROM jsonb_array_elements({c}) "
                f"WITH ORDINALITY AS {a}({var}, o) WHERE coalesce({cond}, false))")

    def count(self, c: str) -> str:
        return f"jsonb_array_length({c})"

    def item(self, c: str, index_sql: str) -> str:
        return self.single(f"({c} -> CAST({index_sql} AS int))")

    def last(self, c: str) -> str:
        return self.single(f"({c} -> -1)")

    def concat(self, a: str, b: str) -> str:
        return f"({a} || {b})"

    def contains(self, c: str, x: str) -> str:
        return f"({c} @> jsonb_build_array({x}))"

    def jtype(self, x: str) -> str:
        return f"jsonb_typeof({x})"

    def text(self, x: str) -> str:
        return f"({x} #>> '{{}}')"

    def num(self, x: str) -> str:
        return f"(CASE WHEN jsonb_typeof({x}) = 'number' THEN ({x} #>> '{{}}')::numeric END)"

    def boolean(self, x: str) -> str:
        return f"(CASE WHEN jsonb_typeof({x}) = 'boolean' THEN ({x} #>> '{{}}')::boolean END)"

    def from_text(self, s: str) -> str:
        return f"to_jsonb(CAST({s} AS text))"

    def from_num(self, n: str) -> str:
        return f"to_jsonb(CAST({n} AS numeric))"

    def from_int(self, n: str) -> str:
        return f"to_jsonb(CAST({n} AS bigint))"

    def from_bool(self, b: str) -> str:
        return f"to_jsonb(CAST({b} AS boolean))"

    def literal(self, value: Any) -> str:
        return f"{self.q(json.dumps(value))}::jsonb"

    def join(self, c: str, sep: str) -> str:
        a = self._alias()
        return (f"(SELECT coalesce(string_agg({a}.v #>> '{{}}', {sep} ORDER BY {a}.o), '') "
                f"FROM jsonb_array_elements({c}) WITH ORDINALITY AS {a}(v, o))")

    def regex_replace(self, s: str, pattern: str, repl: str) -> str:
        return f"regexp_replace({s}, {self.q(pattern)}, {self.q(repl.replace('$', chr(92)))})"

    def regex_extract(self, s: str, pattern: str, group: int) -> str:
        return f"(regexp_match({s}, {self.q(pattern)}))[{group}]"

    def last_day(self, year_month: str) -> str:
        return (f"to_char((date_trunc('month', CAST({year_month} || '-01' AS date)) + interval '1 month - 1 day'), 'DD')")

    def unnest(self, c: str, alias: str) -> str:
        return f"(SELECT x.f, x.o - 1 AS i FROM jsonb_array_elements({c}) WITH ORDINALITY AS x(f, o)) AS {alias}"

    def raise_(self, message: str, row_value: str) -> str:
        # PostgreSQL has no error(): a failing cast carries the message into the error it raises;
        # the row's value (as empty text) keeps the planner from folding the cast of a constant
        return f"CAST(CAST({self.q(message)} || left(CAST({row_value} AS text), 0) AS int) AS text)"

    def several(self, c: str, column: str) -> str:
        # PostgreSQL has no error(): a failing cast carries the message into the error it raises
        bad = self.raise_(f"column {column!r}: several values but the column is not a collection (collection: true)", "col_v")
        return self.let(c, "col_v", f"(CASE WHEN jsonb_array_length(col_v) > 1 THEN CAST({bad} AS jsonb) ELSE col_v -> 0 END)")

    def as_array(self, c: str) -> str:
        return c

    def resource_source(self, table: str, resource_type: str) -> str:
        return f"(SELECT CAST(resource AS jsonb) AS r FROM {table} WHERE CAST(resource AS jsonb) ->> 'resourceType' = {self.q(resource_type)})"


DIALECTS: dict[str, type[Dialect]] = {"duckdb": DuckDB, "postgresql": PostgreSQL}


# ====================================================================================== FHIRPath


class _FhirPath:
    """Compiles one FHIRPath expression (fhirpathpy's parse tree) to SQL for ``dialect``.

    ``focus`` is the SQL of the single JSON item the expression starts from; ``root_type`` its FHIR
    type when known; ``constants`` maps a ``%name`` to its (JSON value, FHIR type); ``row_index``
    the SQL of ``%rowIndex``."""

    def __init__(self, d: Dialect, constants: Mapping[str, tuple[Any, str]], vars_: itertools.count) -> None:
        self.d = d
        self.constants = constants
        self._vars = vars_

    def var(self) -> str:
        return f"v{next(self._vars)}"

    def compile(self, text: str, focus: str, root_type: str | None, row_index: str) -> Expr:
        self.text = text
        self.row_index = row_index
        tree = parse_fhirpath(text)
        node = tree["children"][0] if tree.get("type") == "EntireExpression" or "type" not in tree else tree
        this = Expr(self.d.single(focus), "coll", root_type)
        return self.node(node, this, this)

    def fail(self, what: str) -> SqlCompileError:
        return SqlCompileError(f"{self.text!r}: {what} is not compiled to SQL")

    # -------------------------------------------------------------------------- conversions

    def coll(self, e: Expr) -> Expr:
        if e.kind == "bool":
            return Expr(f"(CASE WHEN ({e.sql}) IS NULL THEN {self.d.empty} ELSE {self.d.single(self.d.from_bool(e.sql))} END)",
                        "coll", "boolean")
        return e

    def boolean(self, e: Expr) -> str:
        """FHIRPath singleton evaluation in a Boolean context (FHIRPath §4.5): empty -> NULL, a
        Boolean item -> its value, any other single item -> true."""
        if e.kind == "bool":
            return e.sql
        d, c = self.d, self.var()
        x = self.first_item(c)
        return d.let(e.sql, c, f"(CASE WHEN {d.count(c)} = 0 THEN NULL WHEN {d.jtype(x)} = 'boolean' "
                               f"THEN {d.boolean(x)} ELSE true END)")

    def first_item(self, c: str) -> str:
        return self.d.first(c)

    # -------------------------------------------------------------------------- tree walk

    def node(self, n: Mapping[str, Any], this: Expr, base: Expr) -> Expr:
        """``this``: the input collection of the current invocation chain; ``base``: ``$this``."""
        t = n.get("type")
        kids = n.get("children") or []
        if t in ("EntireExpression",):
            return self.node(kids[0], this, base)
        if t == "TermExpression":
            return self.term(kids[0], this, base)
        if t == "InvocationExpression":
            left = self.node(kids[0], this, base)
            return self.invocation(kids[1], self.coll(left), base)
        if t == "IndexerExpression":
            left = self.coll(self.node(kids[0], this, base))
            idx = self.coll(self.node(kids[1], base, base))
            index = f"CAST({self.d.text(self.first_item(idx.sql))} AS INTEGER)"
            return Expr(self.d.item(left.sql, index), "coll", left.ftype)
        if t in ("EqualityExpression", "InequalityExpression"):
            op = n["terminalNodeText"][0]
            return self.compare(op, self.coll(self.node(kids[0], this, base)), self.coll(self.node(kids[1], this, base)))
        if t in ("AndExpression", "OrExpression", "ImpliesExpression"):
            op = n["terminalNodeText"][0]
            a = self.boolean(self.node(kids[0], this, base))
            b = self.boolean(self.node(kids[1], this, base))
            if op == "and":
                return Expr(f"(({a}) AND ({b}))", "bool")
            if op == "or":
                return Expr(f"(({a}) OR ({b}))", "bool")
            if op == "xor":
                return Expr(f"(({a}) <> ({b}))", "bool")
            return Expr(f"((NOT ({a})) OR ({b}))", "bool")
        if t in ("AdditiveExpression", "MultiplicativeExpression"):
            return self.arithmetic(n["terminalNodeText"][0], self.coll(self.node(kids[0], this, base)),
                                   self.coll(self.node(kids[1], this, base)))
        if t == "UnionExpression":
            a = self.coll(self.node(kids[0], this, base))
            b = self.coll(self.node(kids[1], this, base))
            v = self.var()
            rest = self.d.filter(b.sql, v, f"NOT {self.d.contains(a.sql, v)}")
            return Expr(self.d.concat(a.sql, rest), "coll", a.ftype if a.ftype == b.ftype else None)
        if t == "PolarityExpression":
            e = self.coll(self.node(kids[0], this, base))
            if n["terminalNodeText"][0] == "-":
                v = self.var()
                return Expr(self.d.map(e.sql, v, self.d.from_num(f"-({self.d.num(v)})")), "coll", e.ftype)
            return e
        if t == "ParenthesizedTerm":
            return self.node(kids[0], this, base)
        raise self.fail(f"the operator {t}")

    def term(self, n: Mapping[str, Any], this: Expr, base: Expr) -> Expr:
        t = n.get("type")
        kids = n.get("children") or []
        if t == "InvocationTerm":
            return self.invocation(kids[0], this, base, navigate_from_this=True)
        if t == "LiteralTerm":
            return self.literal(kids[0])
        if t == "ExternalConstantTerm":
            return self.constant(kids[0])
        if t == "ParenthesizedTerm":
            return self.node(kids[0], this, base)
        raise self.fail(f"the term {t}")

    def literal(self, n: Mapping[str, Any]) -> Expr:
        t = n.get("type")
        text = n.get("text") or "".join(n.get("terminalNodeText") or [])
        if t == "NullLiteral":
            return Expr(self.d.empty, "coll")
        if t == "BooleanLiteral":
            return Expr(self.d.single(self.d.literal(text == "true")), "coll", "boolean")
        if t == "StringLiteral":
            value = text[1:-1].replace("\\'", "'").replace("\\\\", "\\")
            return Expr(self.d.single(self.d.literal(value)), "coll", "string")
        if t == "NumberLiteral":
            return Expr(self.d.single(self.d.literal(json.loads(text))), "coll", "decimal" if "." in text else "integer")
        if t in ("DateLiteral", "DateTimeLiteral", "TimeLiteral"):
            kind = {"DateLiteral": "date", "DateTimeLiteral": "dateTime", "TimeLiteral": "time"}[t]
            return Expr(self.d.single(self.d.literal(text.lstrip("@").lstrip("T"))), "coll", kind)
        raise self.fail(f"the literal {t}")

    def constant(self, n: Mapping[str, Any]) -> Expr:
        name = (n.get("text") or self._type_name(n)).lstrip("%").strip("`").strip("'")
        if name == "rowIndex":
            return Expr(self.d.single(self.d.from_int(self.row_index)), "coll", "integer")
        if name not in self.constants:
            raise self.fail(f"%{name}")
        value, ftype = self.constants[name]
        return Expr(self.d.single(self.d.literal(value)), "coll", ftype)

    def _name(self, n: Mapping[str, Any]) -> str:
        text = n.get("text") or "".join(n.get("terminalNodeText") or [])
        return text.strip("`")

    def invocation(self, n: Mapping[str, Any], this: Expr, base: Expr, navigate_from_this: bool = False) -> Expr:
        t = n.get("type")
        kids = n.get("children") or []
        if t == "MemberInvocation":
            name = self._name(kids[0])
            if navigate_from_this and name[:1].isupper() and name == (this.ftype or ""):
                return this  # a leading type name: ``Patient.name``
            return self.member(this, name)
        if t == "ThisInvocation":
            return base
        if t == "FunctionInvocation":
            fn = kids[0]["children"]
            fname = self._name(fn[0])
            params = fn[1]["children"] if len(fn) > 1 else []
            return self.function(fname, params, this, base)
        raise self.fail(f"the invocation {t}")

    # -------------------------------------------------------------------------- navigation

    def member(self, this: Expr, name: str) -> Expr:
        d, v = self.d, self.var()
        ftype = _PATH2TYPE.get(f"{this.ftype}.{name}") if this.ftype else None
        if ftype and ftype.startswith("System."):
            ftype = ftype[7:].lower()
        direct = d.member(v, name)
        if f"{this.ftype}.{name}" in _PATH2TYPE or not self._may_be_choice(this, name):
            body = direct
        else:
            # a choice element ``value[x]`` is stored as valueQuantity, valueString, ...
            w = self.var()
            body = d.let(direct, w, f"(CASE WHEN {d.count(w)} > 0 THEN {w} ELSE {self._choice(v, name)} END)")
        return Expr(d.flatmap(this.sql, v, body), "coll", ftype, (this, name))

    def _may_be_choice(self, this: Expr, name: str) -> bool:
        if this.ftype and this.ftype[:1].isupper():
            return f"{this.ftype}.{name}" in _CHOICE_PATHS
        return name in _CHOICE_NAMES

    def _choice(self, v: str, name: str) -> str:
        """The value of whichever ``name<Type>`` key the item has (at most one in valid FHIR)."""
        return self.d.choice(v, [name + s for s in sorted(CHOICE_SUFFIXES)])

    def of_type(self, this: Expr, tname: str) -> Expr:
        """``ofType(T)``: right after a choice element, its ``name<T>`` key; otherwise the items of
        that kind (a resource type, or a JSON kind for primitives)."""
        d = self.d
        tname = tname.split(".")[-1].strip("`")
        suffix = tname[0].upper() + tname[1:]
        nav = this.member_of
        if nav is not None and suffix in CHOICE_SUFFIXES and self._may_be_choice(*nav):
            src, name = nav
            v = self.var()
            return Expr(d.flatmap(src.sql, v, d.member(v, name + suffix)), "coll", tname)
        v = self.var()
        if tname in _PRIMITIVES:
            kind = "number" if tname in _NUMERIC else "boolean" if tname == "boolean" else "string"
            return Expr(d.filter(this.sql, v, f"{d.jtype(v)} = {d.q(kind)}"), "coll", tname)
        return Expr(d.filter(this.sql, v, f"{d.text(self._key(v, 'resourceType'))} = {d.q(tname)}"), "coll", tname)

    def _key(self, v: str, key: str) -> str:
        return self.d.key(v, key)

    # -------------------------------------------------------------------------- functions

    def function(self, fname: str, params: list[Mapping[str, Any]], this: Expr, base: Expr) -> Expr:
        d = self.d

        def arg(k: int, focus: Expr | None = None) -> Expr:
            return self.coll(self.node(params[k], focus or base, focus or base))

        def lam(k: int) -> tuple[str, str]:
            """A per-item argument (``where(criteria)``): compiled with ``$this`` bound to each item."""
            v = self.var()
            item = Expr(d.single(v), "coll", this.ftype)
            return v, self.boolean(self.node(params[k], item, item))

        if fname == "where":
            v, cond = lam(0)
            return Expr(d.filter(this.sql, v, cond), "coll", this.ftype)
        if fname == "exists":
            if params:
                v, cond = lam(0)
                return Expr(f"({d.count(d.filter(this.sql, v, cond))} > 0)", "bool")
            return Expr(f"({d.count(this.sql)} > 0)", "bool")
        if fname == "empty":
            return Expr(f"({d.count(this.sql)} = 0)", "bool")
        if fname == "not":
            return Expr(f"(NOT ({self.boolean(this)}))", "bool")
        if fname == "first":
            return Expr(d.item(this.sql, "0"), "coll", this.ftype)
        if fname == "last":
            return Expr(d.last(this.sql), "coll", this.ftype)
        if fname == "count":
            return Expr(d.single(d.from_int(d.count(this.sql))), "coll", "integer")
        if fname == "ofType":
            tname = params[0].get("text") or self._type_name(params[0])
            return self.of_type(this, tname)
        if fname == "extension":
            url = arg(0)
            v = self.var()
            exts = self.member(this, "extension")
            return Expr(d.filter(exts.sql, v, f"{d.text(self.first_item(d.member(v, 'url')))} = "
                                              f"{d.text(self.first_item(url.sql))}"), "coll", "Extension")
        if fname == "join":
            sep = d.text(self.first_item(arg(0).sql)) if params else "''"
            return Expr(d.single(d.from_text(d.join(this.sql, f"coalesce({sep}, '')"))), "coll", "string")
        if fname == "replace":
            a, b = d.text(self.first_item(arg(0).sql)), d.text(self.first_item(arg(1).sql))
            v = self.var()
            return Expr(d.map(this.sql, v, d.from_text(d.replace(d.text(v), a, b))), "coll", "string")
        if fname == "getResourceKey":
            v = self.var()
            rt, rid = d.text(self._key(v, "resourceType")), d.text(self._key(v, "id"))
            return Expr(d.flatmap(this.sql, v, d.single(f"CASE WHEN {rid} IS NOT NULL THEN {d.from_text(f'{rt} || {d.q(chr(47))} || {rid}')} END")),
                        "coll", "string")
        if fname == "getReferenceKey":
            wanted = (params[0].get("text") or self._type_name(params[0])) if params else None
            v = self.var()
            ref = d.regex_replace(d.text(self._key(v, "reference")), "/_history/.*$", "")
            key = d.regex_extract(ref, r"([A-Za-z]+/[^/]+)$", 1)
            cond = f"{key} IS NOT NULL"
            if wanted:
                cond += f" AND {d.regex_extract(key, '^([A-Za-z]+)/', 1)} = {d.q(wanted.split('.')[-1])}"
            return Expr(d.flatmap(this.sql, v, f"(CASE WHEN {cond} THEN {d.single(d.from_text(key))} ELSE {d.empty} END)"),
                        "coll", "string")
        if fname in ("lowBoundary", "highBoundary"):
            return self.boundary(this, fname == "highBoundary")
        raise self.fail(f"the function {fname}()")

    def _type_name(self, n: Mapping[str, Any]) -> str:
        if n.get("text"):
            return str(n["text"])
        return "".join(self._type_name(k) for k in n.get("children") or []) or "".join(n.get("terminalNodeText") or [])

    # -------------------------------------------------------------------------- operators

    def compare(self, op: str, a: Expr, b: Expr) -> Expr:
        """FHIRPath equality and ordering on singletons (FHIRPath §6.1, §6.2): empty when either side
        is empty; numbers compare as numbers, Booleans as Booleans, everything else as text
        (ISO 8601 dates and times of one precision order as text)."""
        d = self.d
        ca, cb = self.var(), self.var()
        x, y = self.first_item(ca), self.first_item(cb)
        numeric = f"{d.jtype(x)} = 'number' AND {d.jtype(y)} = 'number'"
        sql_op = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">=", "~": "=", "!~": "<>"}.get(op)
        if sql_op is None:
            raise self.fail(f"the operator {op}")
        tx, ty = d.text(x), d.text(y)
        if op in ("~", "!~"):
            tx, ty = f"lower({tx})", f"lower({ty})"
        same = (f"(CASE WHEN {d.count(ca)} = 0 OR {d.count(cb)} = 0 THEN NULL "
                f"WHEN {numeric} THEN {d.num(x)} {sql_op} {d.num(y)} "
                f"ELSE {tx} {sql_op} {ty} END)")
        return Expr(d.let(a.sql, ca, d.let(b.sql, cb, same)), "bool")

    def arithmetic(self, op: str, a: Expr, b: Expr) -> Expr:
        d = self.d
        ca, cb = self.var(), self.var()
        x, y = self.first_item(ca), self.first_item(cb)
        empty = f"{d.count(ca)} = 0 OR {d.count(cb)} = 0"

        def bind(body: str) -> str:
            return d.let(a.sql, ca, d.let(b.sql, cb, body))

        if op == "&":
            return Expr(bind(d.single(d.from_text(f"coalesce({d.text(x)}, '') || coalesce({d.text(y)}, '')"))), "coll", "string")
        if op == "+" and (a.ftype == "string" or b.ftype == "string"):
            return Expr(bind(f"(CASE WHEN {empty} THEN {d.empty} ELSE {d.single(d.from_text(f'{d.text(x)} || {d.text(y)}'))} END)"),
                        "coll", "string")
        if op not in ("+", "-", "*", "/"):
            raise self.fail(f"the operator {op}")
        value = f"({d.num(x)} {op} {d.num(y)})" if op != "/" else f"({d.num(x)} / nullif({d.num(y)}, 0))"
        # an integral result of integral operands stays an integer (FHIRPath §6.6: Integer op Integer)
        integral = f"{d.text(x)} NOT LIKE '%.%' AND {d.text(y)} NOT LIKE '%.%' AND {value} = round({value})"
        result = f"(CASE WHEN {integral} THEN {d.from_int(value)} ELSE {d.from_num(value)} END)"
        return Expr(bind(f"(CASE WHEN {empty} THEN {d.empty} ELSE {d.single(result)} END)"), "coll", "decimal")

    def boundary(self, this: Expr, high: bool) -> Expr:
        """``lowBoundary()`` / ``highBoundary()`` (FHIRPath §5.10): a decimal ± half a unit of its
        last place; a partial date or dateTime filled to its first / last instant, without an
        offset at +14:00 / -12:00; a time to the millisecond. The kind comes from the item's FHIR
        type when known (``ofType``, the R4 model), otherwise from its JSON kind and shape."""
        d, v = self.d, self.var()
        kind = this.ftype or ""
        t = d.text(v)
        num = d.num(v)
        decimals = d.regex_extract(t, r"\.([0-9]+)$", 1)
        scale = f"length(coalesce({decimals}, ''))"
        half = d.half_unit(scale)
        dec = d.from_num(f"({num} {'+' if high else '-'} {half})")
        year, month = d.regex_extract(t, r"^(\d{4})", 1), d.regex_extract(t, r"^\d{4}-(\d{2})", 1)
        day = d.regex_extract(t, r"^\d{4}-\d{2}-(\d{2})", 1)
        month_f = f"coalesce({month}, {d.q('12' if high else '01')})"
        day_f = f"coalesce({day}, {d.last_day(f'{year} || {d.q(chr(45))} || {month_f}') if high else d.q('01')})"
        date_text = f"({year} || '-' || {month_f} || '-' || {day_f})"
        tm = r"T(\d{2})(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})?$"
        hh, mm, ss, frac, tz = (d.regex_extract(t, tm, g) for g in range(1, 6))
        fill = "9" if high else "0"
        frac_f = f"substr(rpad(coalesce({frac}, ''), 3, {d.q(fill)}), 1, 3)"
        time_text = (f"(coalesce({hh}, {d.q('23' if high else '00')}) || ':' || coalesce({mm}, {d.q('59' if high else '00')}) "
                     f"|| ':' || coalesce({ss}, {d.q('59' if high else '00')}) || '.' || {frac_f} || "
                     f"coalesce({tz}, {d.q('-12:00' if high else '+14:00')}))")
        tonly = r"^(\d{2})(?::(\d{2}))?(?::(\d{2}))?(?:\.(\d+))?$"
        th, tmm, ts, tf = (d.regex_extract(t, tonly, g) for g in range(1, 5))
        tfrac = f"substr(rpad(coalesce({tf}, ''), 3, {d.q(fill)}), 1, 3)"
        time_only = (f"({th} || ':' || coalesce({tmm}, {d.q('59' if high else '00')}) || ':' || "
                     f"coalesce({ts}, {d.q('59' if high else '00')}) || '.' || {tfrac})")
        if kind in _NUMERIC or kind == "decimal":
            body = dec
        elif kind == "date":
            body = d.from_text(date_text)
        elif kind in ("dateTime", "instant"):
            body = d.from_text(f"{date_text} || 'T' || {time_text}")
        elif kind == "time":
            body = d.from_text(time_only)
        else:
            body = (f"(CASE WHEN {d.jtype(v)} = 'number' THEN {dec} "
                    f"WHEN {d.matches(t, '^[0-9]{2}(:|$)')} THEN {d.from_text(time_only)} "
                    f"WHEN {t} LIKE '%T%' THEN {d.from_text(f'{date_text} || {d.q(chr(84))} || {time_text}')} "
                    f"WHEN {d.matches(t, '^[0-9]{4}')} THEN {d.from_text(date_text)} END)")
        return Expr(d.flatmap(this.sql, v, d.single(f"(CASE WHEN {d.jtype(v)} IN ('number', 'string') THEN {body} END)")),
                    "coll", kind or None)


# ====================================================================================== views


@dataclass(frozen=True)
class SqlView:
    """A ViewDefinition compiled for one engine: ``sql`` reads ``{source}`` (a relation with one
    resource of type ``resource`` per row, JSON column ``r``) and yields the view's ``columns`` in
    order, each as a JSON value (an array for a ``collection`` column)."""

    resource: str
    columns: list[dict[str, Any]]
    sql: str
    dialect: str

    def over(self, source: str) -> str:
        """The query over ``source``: a table or a parenthesised subquery with a JSON column ``r``."""
        return self.sql.replace("{source}", source)


class _ViewCompiler:
    def __init__(self, view: Mapping[str, Any], dialect: Dialect) -> None:
        self.view = view
        self.d = dialect
        self.checked = CompiledView(view)  # the specification's validation, shared with the runner
        if not re.fullmatch(r"[A-Z][A-Za-z]{1,63}", str(self.checked.resource)):
            raise ViewDefinitionError(f"ViewDefinition.resource {str(self.checked.resource)[:64]!r} is not a FHIR resource type")
        self._aliases = itertools.count()
        self._vars = itertools.count()
        self.constants = {c["name"]: _constant(c) for c in view.get("constant") or []}

    def alias(self, stem: str) -> str:
        return f"{stem}{next(self._aliases)}"

    def fp(self, path: str, focus: str, ftype: str | None, row_index: str) -> Expr:
        return _FhirPath(self.d, self.constants, self._vars).compile(path, focus, ftype, row_index)

    def compile(self) -> SqlView:
        d, rt = self.d, self.checked.resource
        conds = []
        for i, w in enumerate(self.view.get("where") or []):
            e = self.fp(w["path"], "res.r", rt, "0")
            if e.kind == "bool":
                conds.append(f"coalesce({e.sql}, false)")
                continue
            # the specification: a where path must give a Boolean (empty counts as false)
            x = d.first("w_v")
            bad = d.raise_(f"where[{i}].path {w['path']!r} must give a boolean", "w_v")
            conds.append("coalesce(" + d.let(e.sql, "w_v", f"CASE WHEN {d.count('w_v')} = 0 THEN false WHEN {d.count('w_v')} = 1 AND "
                         f"{d.jtype(x)} = 'boolean' THEN {d.boolean(x)} ELSE CAST({bad} AS BOOLEAN) END") + ", false)")
        body, _ = self.select({"select": self.view["select"]}, "res.r", rt, "0")
        names = [c["name"] for c in self.checked.columns]
        cols = ", ".join(f"v.{d.ident(n)}" for n in names)
        sql = (f"SELECT {cols} FROM {{source}} AS res CROSS JOIN LATERAL ({body}) AS v"
               + (f" WHERE {' AND '.join(conds)}" if conds else ""))
        return SqlView(rt, self.checked.columns, sql, d.name)

    def select(self, s: Mapping[str, Any], focus: str, ftype: str | None, row_index: str) -> tuple[str, list[str]]:
        """SQL yielding the rows of selection ``s`` for the single item ``focus``, and its column names."""
        d = self.d
        iterate = next((k for k in ("forEach", "forEachOrNull", "repeat") if k in s), None)
        froms: list[str] = []
        if iterate:
            it = self.alias("it")
            if iterate == "repeat":
                foci = self.repeat(s["repeat"], focus, ftype, row_index)
                item_type = None
            else:
                e = self.fp(s[iterate], focus, ftype, row_index)
                foci, item_type = (e.sql if e.kind == "coll" else _FhirPath(d, self.constants, self._vars).coll(e).sql), e.ftype
            froms.append(d.unnest(foci, it))
            item, index = f"{it}.f", f"{it}.i"
        else:
            foci, item, item_type, index = "", focus, ftype, row_index
        exprs: list[str] = []
        names: list[str] = []
        for c in s.get("column") or []:
            e = self.fp(c["path"], item, item_type, index)
            coll = _FhirPath(d, self.constants, self._vars).coll(e).sql
            exprs.append((d.as_array(coll) if c.get("collection") is True else d.several(coll, c["name"]))
                         + f" AS {d.ident(c['name'])}")
            names.append(c["name"])
        for sub in s.get("select") or []:
            sql, sub_names = self.select(sub, item, item_type, index)
            a = self.alias("s")
            froms.append(f"LATERAL ({sql}) AS {a}")
            exprs += [f"{a}.{d.ident(n)}" for n in sub_names]
            names += sub_names
        if s.get("unionAll"):
            parts, u_names = [], None
            for b in s["unionAll"]:
                sql, b_names = self.select(b, item, item_type, index)
                parts.append(f"SELECT * FROM ({sql}) AS {self.alias('b')}")
                u_names = u_names or b_names
            a = self.alias("u")
            froms.append(f"LATERAL ({' UNION ALL '.join(parts)}) AS {a}")
            exprs += [f"{a}.{d.ident(n)}" for n in u_names or []]
            names += u_names or []
        select = f"SELECT {', '.join(exprs) if exprs else 'NULL AS _empty'}"
        sql = select + (" FROM " + " CROSS JOIN ".join(froms) if froms else "")
        if iterate == "forEachOrNull":
            # no foci: one row, every column of this selection null (%rowIndex 0)
            nulls = ", ".join(f"{d.literal(0) if p == '%rowIndex' else 'NULL'} AS {d.ident(n)}"
                              for n, p in zip(names, _paths(s, names), strict=True))
            sql = f"{sql} UNION ALL SELECT {nulls} WHERE {d.count(foci)} = 0"
        return sql, names

    def repeat(self, paths: list[str], focus: str, ftype: str | None, row_index: str) -> str:
        """Every item reached by one or more steps of ``paths`` (pre-order per level), to
        :data:`REPEAT_DEPTH` levels."""
        d = self.d
        fp = _FhirPath(d, self.constants, self._vars)

        def children(item: str, ftype_: str | None) -> str:
            steps = [fp.coll(self.fp(p, item, ftype_, row_index)).sql for p in paths]
            out = steps[0]
            for st in steps[1:]:
                out = d.concat(out, st)
            return out

        def below(item: str, ftype_: str | None, depth: int) -> str:
            """Each child of ``item`` followed by everything below it (the runner's pre-order)."""
            kids = children(item, ftype_)
            if depth == REPEAT_DEPTH:
                return kids
            v = fp.var()
            return d.flatmap(kids, v, d.concat(d.single(v), below(v, None, depth + 1)))

        return below(focus, ftype, 1)


def _paths(s: Mapping[str, Any], names: list[str]) -> list[str | None]:
    from adapter.views.runner import _all_columns

    paths = {c["name"]: c.get("path") for c in _all_columns(s)}
    return [paths.get(n) for n in names]


def _constant(c: Mapping[str, Any]) -> tuple[Any, str]:
    key = next(k for k in c if k.startswith("value"))
    ftype = key[5:6].lower() + key[6:]
    return c[key], ftype


def compile_view(view: Mapping[str, Any], dialect: str = "duckdb") -> SqlView:
    """``view`` (a ViewDefinition as JSON) compiled to one SQL query for ``dialect`` (``duckdb`` or
    ``postgresql``). Raises :class:`ViewDefinitionError` for an invalid view (the specification's
    rules, as the reference runner checks them) and :class:`SqlCompileError` for FHIRPath this
    compiler does not translate."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}: one of {sorted(DIALECTS)}")
    return _ViewCompiler(view, DIALECTS[dialect]()).compile()
