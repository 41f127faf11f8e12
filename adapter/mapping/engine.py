"""Apply a compiled mapping to one row: raw cells -> typed concept inputs -> FHIR resources. Pure.

A row is all-or-nothing: if any field or builder of any of its resource blocks fails, the row yields
no resources and one :class:`RowIssue` per problem, each naming file, sheet, row, column and value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError

from adapter.errors import RowIssue, TransformError
from adapter.mapping import patterns
from adapter.mapping.base import SiteContext
from adapter.mapping.transforms import TransformContext
from adapter.readers.base import CellError, Row, is_blank
from adapter.search.params import normalize_identifier
from adapter.search.query import CONTROL
from adapter.spec.loader import CompiledBlock, CompiledField, CompiledSheet
from adapter.spec.models import When


@dataclass
class RowResult:
    """What one row produced: resources (if it was mapped) or issues (if it was rejected)."""

    row: Row
    resources: list[dict[str, Any]] = field(default_factory=list)
    issues: list[RowIssue] = field(default_factory=list)
    skipped: str | None = None  # the mapping's reason, for a row it deliberately does not map
    #: notes that do not reject the row (an identifier written in another Unicode form)
    warnings: list[RowIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.issues


def _raw_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value).strip()


def _when(block: CompiledBlock, row: Row, nulls: frozenset[str] = frozenset()) -> bool:  # every condition holds
    return all(_holds(w, row, nulls) for w in block.when)


def _holds(w: When, row: Row, nulls: frozenset[str] = frozenset()) -> bool:
    """Whether condition ``w`` holds on ``row``. A cell holding one of the reader's ``null_values``
    (``-``, ``NA``) is absent here as in the fields: ``present: true`` is false, ``not_in`` holds."""
    try:
        text = _raw_text(_cell(row.cells.get(w.column)))
    except TransformError as exc:
        exc.column = w.column  # type: ignore[attr-defined]
        raise
    if text.casefold() in nulls:
        text = ""
    if w.present is not None and (text != "") != w.present:
        return False
    try:
        if w.matches is not None and patterns.search(w.matches, text) is None:
            return False
        if w.not_matches is not None and patterns.search(w.not_matches, text) is not None:
            return False
    except TransformError as exc:
        exc.column = w.column  # type: ignore[attr-defined]
        raise
    if w.in_ is not None and text not in w.in_:
        return False
    return not (w.not_in is not None and text in w.not_in)


#: Concept fields that carry a site identifier (record number, lab folio): normalised before any id
#: is derived from them (adapter/search/params.py ``normalize_identifier``).
IDENTIFIER_FIELDS = ("patient", "identifier")


def _cell(value: Any) -> Any:
    """A raw cell as a transform may see it. Raises :class:`TransformError` for a cell no FHIR
    value can come from: an Excel error (``#N/A``, ``#REF!``…: a formula that failed, not data)
    or text holding a control character (FHIR R4 strings exclude them)."""
    if isinstance(value, CellError):
        raise TransformError(str(value), f"the cell holds the spreadsheet error {value} (a formula that failed), not a value")
    if isinstance(value, str) and CONTROL.search(value):
        raise TransformError(value.encode("unicode_escape").decode("ascii"),
                             "the value holds a control character (U+0000-U+001F), which no FHIR string may hold")
    return value


def _field_value(f: CompiledField, row: Row, ctx: TransformContext) -> Any:
    value = _cell(row.cells.get(f.column)) if f.column is not None else f.value
    if is_blank(value) or (f.null_values and isinstance(value, str) and value.strip().casefold() in f.null_values):
        return None  # a null token ('-', 'NA' ...) is an absent value, never a parse error
    for step in f.steps:
        kwargs = step.args
        if step.column_args:
            kwargs = dict(kwargs)
            for aname, col in step.column_args.items():
                ref = _cell(row.cells.get(col))
                kwargs[aname] = None if is_blank(ref) else ref
        value = step.fn(value, ctx=ctx, **kwargs)
        if value is None:
            return None
    return value


def _issue(row: Row, column: str | None, value: Any, reason: str, code: str = "value",
           expression: str | None = None) -> RowIssue:
    return RowIssue(row.file, row.sheet, row.row, column, _raw_text(value) if value is not None else None,
                    reason, code=code, expression=[expression] if expression else [], segment=row.segment)


def map_row(row: Row, sheet: CompiledSheet, ctx: TransformContext, site: SiteContext) -> RowResult:
    """Map one row through every resource block of its sheet.

    Output: :class:`RowResult` with FHIR R4 resource dicts, or the row's issues. Never raises for bad
    data: transform errors, missing required values, type errors and builder rule violations all
    become issues.
    """
    result = RowResult(row)
    if row.problem:
        result.issues.append(_issue(row, None, None, row.problem, code="structure"))
        return result
    applied = 0
    for block in sheet.blocks:
        try:
            if not _when(block, row, sheet.nulls):
                continue
        except TransformError as exc:  # a when-pattern that ran out of time, or an unreadable cell
            col = getattr(exc, "column", None)
            result.issues.append(_issue(row, col, exc.value, f"when: {exc.reason}",
                                        code="too-costly" if "time" in exc.reason else "value"))
            continue
        applied += 1
        values: dict[str, Any] = {}
        columns = {f.name: f.column for f in block.fields}
        failed = False
        for f in block.fields:
            try:
                v = _field_value(f, row, ctx)
            except TransformError as exc:
                raw = row.cells.get(f.column) if f.column is not None else None
                shown = exc.value if f.column is None or isinstance(raw, CellError) or (
                    isinstance(raw, str) and CONTROL.search(raw)) else raw
                result.issues.append(_issue(row, f.column, shown, f"{f.name}: {exc.reason}", code=exc.code,
                                            expression=block.concept.name + "." + f.name))
                failed = True
                continue
            if f.name in IDENTIFIER_FIELDS and isinstance(v, str):
                canonical = normalize_identifier(v)
                if canonical != v.strip():
                    result.warnings.append(RowIssue(
                        row.file, row.sheet, row.row, f.column, v.encode("unicode_escape").decode("ascii"),
                        f"{f.name}: read as '{canonical}' (Unicode NFKC, invisible format characters removed), so "
                        "that every spelling of the identifier names the same record", severity="warning",
                        code="informational", segment=row.segment))
                v = canonical
            if v is not None:
                values[f.name] = v
        if failed:
            continue
        try:
            inp = block.concept.input_model.model_validate(values)
        except ValidationError as exc:
            for err in exc.errors():
                fname = str(err["loc"][0]) if err["loc"] else ""
                col = columns.get(fname)
                if err["type"] == "missing":
                    reason = f"{fname}: required value is missing"
                    code = "required"
                else:
                    reason = f"{fname}: {err['msg']}"
                    code = "value"
                result.issues.append(_issue(row, col, row.cells.get(col) if col else None, reason, code,
                                            block.concept.name + "." + fname))
            continue
        try:
            result.resources.extend(block.concept.build(inp, site))
        except ValueError as exc:
            result.issues.append(_issue(row, None, None, f"{block.concept.name}: {exc}", code="invariant"))
    if applied == 0 and not result.issues:
        try:
            reason = next((r for conds, r in sheet.skip if all(_holds(w, row, sheet.nulls) for w in conds)), None)
        except TransformError as exc:
            col = getattr(exc, "column", None)
            result.issues.append(_issue(row, col, exc.value, f"skip: {exc.reason}"))
            return result
        if reason is not None:
            result.skipped = reason
            return result
        result.issues.append(_issue(row, None, None, "no resource block of the mapping applies to this row",
                                    code="not-supported"))
    if result.issues:
        result.resources = []
        result.warnings = []
    return result
