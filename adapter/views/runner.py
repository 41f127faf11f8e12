"""SQL on FHIR v2 ViewDefinitions, run in memory: the reference runner.

A ViewDefinition (https://sql-on-fhir.org/ig/StructureDefinition-ViewDefinition.html) turns each
resource of one type into zero or more flat rows, with FHIRPath expressions for its columns. This
module follows the specification's processing algorithm ("Process a Resource" and ``Process(S, N)``
in ``StructureDefinition-ViewDefinition-notes.md``) step by step: ``where`` filters, ``select``
nesting as a Cartesian product, ``forEach`` / ``forEachOrNull`` / ``repeat`` iteration with
``%rowIndex``, ``unionAll``, ``constant`` (``%name``), and the functions ``getResourceKey()`` and
``getReferenceKey([type])``. FHIRPath itself is evaluated by fhirpathpy (beda.software, MIT), a
maintained FHIRPath implementation.

It is the oracle the SQL compilers are checked against, and passes the official test suite
(``tests/sql_on_fhir/``, see tests/test_views.py). It is meant for correctness, not volume.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

import fhirpathpy

from adapter.errors import ConfigError


class ViewDefinitionError(ConfigError):
    """A ViewDefinition that cannot be run: its shape breaks the specification (no ``resource``,
    columns of ``unionAll`` branches that differ, an undefined constant, FHIRPath that does not
    parse, a ``where`` that is not boolean), or a column found several values without
    ``collection: true``. The message names the element (``select[1].forEach``). CLI exit 2."""


#: ``constant.value[x]`` types the specification allows (FHIR primitive types)
_CONSTANT_TYPES = ("Base64Binary", "Boolean", "Canonical", "Code", "Date", "DateTime", "Decimal", "Id",
                   "Instant", "Integer", "Integer64", "Oid", "String", "PositiveInt", "Time",
                   "UnsignedInt", "Uri", "Url", "Uuid")


def _resource_key(nodes: list[Any]) -> list[Any]:
    """``getResourceKey()``: the resource's ``ResourceType/id`` (the same text getReferenceKey gives
    for a relative reference to it)."""
    return [f"{n['resourceType']}/{n['id']}" for n in nodes if isinstance(n, dict) and n.get("id")]


def _reference_key(nodes: list[Any], rtype: Any = None) -> list[Any]:
    """``getReferenceKey([type])``: the key of the resource a Reference points to, for relative
    (``Type/id``) and absolute (``.../Type/id``) references, optionally only of ``type``."""
    wanted = getattr(rtype, "name", rtype)
    if isinstance(wanted, list):
        wanted = wanted[0] if wanted else None
    out = []
    for n in nodes:
        ref = n.get("reference") if isinstance(n, dict) else None
        if not isinstance(ref, str) or "/" not in ref:
            continue
        parts = ref.split("/_history/")[0].rstrip("/").split("/")
        if len(parts) < 2:
            continue
        rt, rid = parts[-2], parts[-1]
        if wanted and str(wanted).split(".")[-1] != rt:
            continue
        out.append(f"{rt}/{rid}")
    return out


def _model() -> dict[str, Any]:
    from fhirpathpy.models import models

    return models["r4"]


def _json(value: Any) -> Any:
    """A FHIRPath result node as JSON: objects and arrays as they are in the resource, decimals as
    numbers, dates and times as their text."""
    from fhirpathpy.engine.nodes import FP_Type
    from fhirpathpy.engine.util import get_data

    data = get_data(value)
    if isinstance(data, list):
        return [_json(v) for v in data]
    if isinstance(data, dict):
        return {k: _json(v) for k, v in data.items()}
    if isinstance(data, Decimal):
        return int(data) if data == data.to_integral_value() and "." not in str(data) else float(data)
    if isinstance(data, FP_Type):
        return str(data)
    return data


def _join(nodes: list[Any], separator: Any = "") -> list[Any]:
    """``join([separator])`` as the SQL on FHIR suite expects it: an empty input joins to ``''``."""
    sep = separator[0] if isinstance(separator, list) and separator else separator
    return [(sep if isinstance(sep, str) else "").join(str(n) for n in nodes)]


_FUNCTIONS = {
    "getResourceKey": {"fn": _resource_key, "arity": {0: []}},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["TypeSpecifier"]}},
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
}

_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _boundary(value: Any, kind: str, high: bool) -> Any:
    """FHIRPath ``lowBoundary()`` / ``highBoundary()`` (FHIRPath 3.0 §5.10) of one decimal, date or
    dateTime: the least / greatest value the input's precision allows (a decimal of n places ±
    half a unit of its last place; a partial date or dateTime filled to its first / last instant,
    a dateTime without an offset taken at +14:00 / -12:00, a time to the millisecond). None for
    other kinds."""
    if kind in ("decimal", "integer"):
        d = Decimal(str(value))
        exponent = d.as_tuple().exponent
        half = Decimal(5).scaleb(int(exponent) - 1 if isinstance(exponent, int) else -1)
        return float(d + half if high else d - half)
    if kind == "time":
        m = re.fullmatch(r"(\d{2})(?::(\d{2}))?(?::(\d{2})(?:\.(\d+))?)?", str(value))
        if not m:
            return None
        hh, mm, ss, frac = m.groups()
        return (f"{hh}:{mm or ('59' if high else '00')}:{ss or ('59' if high else '00')}."
                f"{(frac or '').ljust(3, '9' if high else '0')[:3]}")
    if kind not in ("date", "dateTime"):
        return None
    text = str(value)
    date_part, _, time_part = text.partition("T")
    pieces = date_part.split("-")
    year = int(pieces[0])
    month = int(pieces[1]) if len(pieces) > 1 else (12 if high else 1)
    if len(pieces) > 2:
        day = int(pieces[2])
    elif high:
        day = 28 if month == 2 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)) else _MONTH_DAYS[month - 1]
    else:
        day = 1
    date_text = f"{year:04d}-{month:02d}-{day:02d}"
    if kind == "date":
        return date_text
    m = re.fullmatch(r"(\d{2})(?::(\d{2}))?(?::(\d{2})(?:\.(\d+))?)?(Z|[+-]\d{2}:\d{2})?", time_part) if time_part else None
    hh, mm, ss, frac, tz = (m.groups() if m else (None, None, None, None, None))
    hh = hh or ("23" if high else "00")
    mm = mm or ("59" if high else "00")
    ss = ss or ("59" if high else "00")
    frac = (frac or "").ljust(3, "9" if high else "0")[:3]
    tz = tz or ("-12:00" if high else "+14:00")
    return f"{date_text}T{hh}:{mm}:{ss}.{frac}{tz}"


def _register_boundaries() -> None:
    """fhirpathpy 2.2.4 has no ``lowBoundary``/``highBoundary``; they need the input's FHIR type
    (a date and a dateTime with the same text differ), which the library gives its own functions
    only, so they join its function registry here, unless a later version brings its own."""
    from fhirpathpy.engine.invocations import invocation_registry
    from fhirpathpy.engine.nodes import ResourceNode

    def make(high: bool) -> Any:
        def fn(ctx: Any, coll: list[Any], *_: Any) -> list[Any]:
            out = []
            for node in coll:
                kind = node.path if isinstance(node, ResourceNode) else (
                    "decimal" if isinstance(node, (int, float, Decimal)) and not isinstance(node, bool) else None)
                value = node.data if isinstance(node, ResourceNode) else node
                b = _boundary(value, str(kind), high) if value is not None else None
                if b is not None:
                    out.append(b)
            return out

        return fn

    invocation_registry.setdefault("lowBoundary", {"fn": make(False), "arity": {0: [], 1: ["Integer"]}})
    invocation_registry.setdefault("highBoundary", {"fn": make(True), "arity": {0: [], 1: ["Integer"]}})


_register_boundaries()


_OPTIONS = {"userInvocationTable": _FUNCTIONS, "returnRawData": True}
#: fhirpathpy keeps the model and the clock of an evaluation in class attributes: one evaluation at
#: a time per process (views run in worker threads of the service)
_FHIRPATH_LOCK = threading.Lock()


class CompiledView:
    """A validated ViewDefinition with its FHIRPath compiled once.

    ``columns`` lists the output columns in order (``{"name", "type", "collection"}``); ``rows(resources)``
    yields one dict per output row (column name -> JSON value, ``None`` for an empty result, a list
    for a ``collection`` column). Raises :class:`ViewDefinitionError` on construction for an invalid
    view, and while running for several values in a non-collection column."""

    def __init__(self, view: Mapping[str, Any]) -> None:
        if not isinstance(view, Mapping) or not view:
            raise ViewDefinitionError("a ViewDefinition must be a non-empty object")
        self.view = view
        self.resource = view.get("resource")
        if not isinstance(self.resource, str) or not self.resource:
            raise ViewDefinitionError("ViewDefinition.resource is required (the FHIR resource type the view reads)")
        self.constants = self._constants(view.get("constant") or [])
        self._compiled: dict[str, Any] = {}
        self.where = [self._compile(w.get("path"), f"where[{i}].path") for i, w in enumerate(view.get("where") or [])]
        if not view.get("select"):
            raise ViewDefinitionError("ViewDefinition.select needs at least one selection")
        self.columns = self._check_select({"select": view["select"]}, "")

    # ---------------------------------------------------------------------------------- checks

    def _constants(self, items: list[Any]) -> dict[str, Any]:
        out = {}
        for i, c in enumerate(items):
            if not isinstance(c, Mapping) or not isinstance(c.get("name"), str):
                raise ViewDefinitionError(f"constant[{i}] needs a name")
            values = [k for k in c if k.startswith("value") and k[5:] in _CONSTANT_TYPES]
            if len(values) != 1 or set(c) - {"name", values[0], "id", "extension"}:
                raise ViewDefinitionError(f"constant[{i}] ({c.get('name')}) needs exactly one value[x] of a "
                                          f"primitive type")
            out[c["name"]] = c[values[0]]
        return out

    def _compile(self, path: Any, where: str) -> Any:
        if not isinstance(path, str) or not path.strip():
            raise ViewDefinitionError(f"{where} must be a FHIRPath expression (a non-empty string)")
        if path not in self._compiled:
            for name in _variables(path):
                if name not in self.constants and name not in ("rowIndex", "resource", "context", "ucum"):
                    raise ViewDefinitionError(f"{where}: %{name} is not a constant of this view")
            try:
                # fhirpathpy binds $this only inside a function's argument: select() gives it the focus
                text = f"select({path})" if "$this" in path else path
                self._compiled[path] = fhirpathpy.compile(text, model=_model(), options=_OPTIONS)
            except Exception as exc:  # noqa: BLE001  (fhirpathpy raises the parser's own exceptions)
                raise ViewDefinitionError(f"{where}: {path!r} is not valid FHIRPath ({exc.__class__.__name__})") from None
        return self._compiled[path]

    def _check_select(self, s: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
        """The columns ``s`` produces, in order (ValidateColumns of the specification)."""
        if not isinstance(s, Mapping):
            raise ViewDefinitionError(f"{where or 'select'} must be an object")
        iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in s]
        if len(iterators) > 1:
            raise ViewDefinitionError(f"{where}: only one of forEach, forEachOrNull and repeat")
        for k in iterators:
            paths = s[k] if k == "repeat" else [s[k]]
            if k == "repeat" and (not isinstance(paths, list) or not paths):
                raise ViewDefinitionError(f"{where}.repeat must be a list of FHIRPath expressions")
            for j, p in enumerate(paths):
                self._compile(p, f"{where}.{k}" + (f"[{j}]" if k == "repeat" else ""))
        cols: list[dict[str, Any]] = []
        for i, c in enumerate(s.get("column") or []):
            if not isinstance(c, Mapping) or not isinstance(c.get("name"), str) or not c.get("name"):
                raise ViewDefinitionError(f"{where}.column[{i}] needs a name")
            self._compile(c.get("path"), f"{where}.column[{i}].path")
            cols.append({"name": c["name"], "type": c.get("type"), "collection": c.get("collection") is True})
        for i, sub in enumerate(s.get("select") or []):
            cols += self._check_select(sub, f"{where}.select[{i}]".lstrip("."))
        branches = s.get("unionAll") or []
        if branches:
            first = None
            for i, b in enumerate(branches):
                names = [c["name"] for c in self._check_select(b, f"{where}.unionAll[{i}]")]
                if first is None:
                    first = names
                elif names != first:
                    raise ViewDefinitionError(f"{where}.unionAll[{i}] has columns {names}, the first branch {first}: "
                                              "every branch needs the same columns in the same order")
            cols += [c for c in self._check_select(branches[0], f"{where}.unionAll[0]")]
        seen: set[str] = set()
        if not where:
            for c in cols:
                if c["name"] in seen:
                    raise ViewDefinitionError(f"column name {c['name']!r} is used twice")
                seen.add(c["name"])
        return cols

    # ---------------------------------------------------------------------------------- running

    def _eval(self, path: str, node: Any, row_index: int) -> list[Any]:
        """FHIRPath nodes (typed, so that a focus passed to a nested selection keeps its type).
        Raises ViewDefinitionError when the expression fails on this input (an unknown function, a
        type error), naming the expression."""
        try:
            with _FHIRPATH_LOCK:
                return list(self._compiled[path](node, {**self.constants, "rowIndex": row_index}))
        except ViewDefinitionError:
            raise
        except Exception as exc:  # noqa: BLE001  (fhirpathpy raises plain Exceptions at evaluation)
            raise ViewDefinitionError(f"{path!r} cannot be evaluated: {str(exc)[:200]}") from None

    def rows(self, resources: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
        """Rows of every resource of the view's type, in input order (Process a Resource)."""
        names = [c["name"] for c in self.columns]
        for r in resources:
            if r.get("resourceType") != self.resource:
                continue
            if not all(self._where(w_path, r, i) for i, w_path in enumerate(self.view.get("where") or [])):
                continue
            for row in self._process({"select": self.view["select"]}, r, 0):
                yield {n: row.get(n) for n in names}

    def _where(self, w: Mapping[str, Any], r: Mapping[str, Any], i: int) -> bool:
        value = [_json(x) for x in self._eval(w["path"], r, 0)]
        if not value:
            return False
        if len(value) != 1 or not isinstance(value[0], bool):
            raise ViewDefinitionError(f"where[{i}].path {w['path']!r} must give a boolean, gave {value[:3]!r}")
        return value[0]

    def _foci(self, s: Mapping[str, Any], node: Any, row_index: int) -> list[Any]:
        if "repeat" in s:
            out: list[Any] = []

            def traverse(n: Any, root: bool) -> None:
                if not root:
                    out.append(n)
                for p in s["repeat"]:
                    for child in self._eval(p, n, row_index):
                        traverse(child, False)

            traverse(node, True)
            return out
        if "forEach" in s:
            return self._eval(s["forEach"], node, row_index)
        if "forEachOrNull" in s:
            return self._eval(s["forEachOrNull"], node, row_index)
        return [node]

    def _process(self, s: Mapping[str, Any], node: Any, row_index: int) -> Iterator[dict[str, Any]]:
        iterates = any(k in s for k in ("forEach", "forEachOrNull", "repeat"))
        foci = self._foci(s, node, row_index)
        for i, f in enumerate(foci):
            index = i if iterates else row_index
            parts: list[list[dict[str, Any]]] = []
            for c in s.get("column") or []:
                val = [_json(x) for x in self._eval(c["path"], f, index)]
                if not val:
                    v: Any = [] if c.get("collection") is True else None
                elif c.get("collection") is True:
                    v = val
                elif len(val) == 1:
                    v = val[0]
                else:
                    raise ViewDefinitionError(f"column {c['name']!r}: several values ({len(val)}) but the column is not "
                                              "a collection (collection: true)")
                parts.append([{c["name"]: v}])
            for sub in s.get("select") or []:
                parts.append(list(self._process(sub, f, index)))
            if s.get("unionAll"):
                parts.append([row for u in s["unionAll"] for row in self._process(u, f, index)])
            for combo in itertools.product(*parts):
                row: dict[str, Any] = {}
                for p in combo:
                    row.update(p)
                yield row
        if not foci and "forEachOrNull" in s:
            names = [c["name"] for c in self._check_select(s, "")]
            paths = {c["name"]: c.get("path") for c in _all_columns(s)}
            yield {n: (0 if paths.get(n) == "%rowIndex" else None) for n in names}


def _all_columns(s: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from s.get("column") or []
    for sub in s.get("select") or []:
        yield from _all_columns(sub)
    if s.get("unionAll"):
        yield from _all_columns(s["unionAll"][0])


def _variables(path: str) -> list[str]:
    """The ``%name`` environment variables an expression uses (outside string literals)."""
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", path)
    return re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)", text)


def run_view(view: Mapping[str, Any], resources: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``view`` over ``resources`` (FHIR JSON objects), as a list of dicts in column order.
    Raises :class:`ViewDefinitionError` (see :class:`CompiledView`)."""
    return list(CompiledView(view).rows(resources))
