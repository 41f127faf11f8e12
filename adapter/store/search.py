"""Run a parsed :class:`~adapter.search.query.Query` as SQL over ``resources`` and ``search_index``.

Matching rules are FHIR R4 §3.1.1.4 (see adapter/search/query.py). Paging is by offset within a
snapshot: a search fixes an instant, and later pages see only resources created at or before it
(resources deleted after it still hold their place), so new data never shifts a page.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Connection, and_, false, func, not_, or_, select, true

from adapter.search.query import Clause, DateRange, Number, Query, Reference, Text, Token
from adapter.store.schema import resources, search_index

si = search_index


@dataclass
class SearchResult:
    """``total`` matches at the snapshot; ``matches`` = this page's resources (JSON dicts) in order;
    ``included`` = resources pulled in by ``_include``/``_revinclude`` (no duplicates)."""

    total: int
    matches: list[dict[str, Any]] = field(default_factory=list)
    included: list[dict[str, Any]] = field(default_factory=list)


def _date_cond(lo: Any, hi: Any, v: DateRange) -> ColumnElement[bool]:
    match v.prefix:
        case "eq":
            return and_(lo >= v.lo, hi <= v.hi)
        case "ne":
            return not_(and_(lo >= v.lo, hi <= v.hi))
        case "gt":
            return hi > v.hi
        case "lt":
            return lo < v.lo
        case "ge":
            return hi >= v.lo
        case "le":
            return lo <= v.hi
        case "sa":
            return lo > v.hi
        case _:  # eb
            return hi < v.lo


def _number_cond(v: Number) -> ColumnElement[bool]:
    n = si.c.num
    match v.prefix:
        case "eq":
            c = and_(n >= v.lo, n < v.hi)
        case "ne":
            c = or_(n < v.lo, n >= v.hi)
        case "gt" | "sa":
            c = n > v.value
        case "lt" | "eb":
            c = n < v.value
        case "ge":
            c = n >= v.value
        case _:  # le
            c = n <= v.value
    if v.system:
        c = and_(c, si.c.system == v.system)
    if v.unit:
        c = and_(c, si.c.value == v.unit)
    return c


def _value_cond(value: Any) -> ColumnElement[bool]:
    if isinstance(value, Token):
        conds = []
        if value.code is not None:
            conds.append(si.c.value == value.code)
        if value.system == "":
            conds.append(si.c.system.is_(None))
        elif value.system is not None:
            conds.append(si.c.system == value.system)
        return and_(true(), *conds)
    if isinstance(value, Reference):
        if value.key.startswith("*/"):
            return si.c.value.like("%/" + value.key[2:].replace("%", "").replace("_", "\\_"), escape="\\")
        return si.c.value == value.key
    if isinstance(value, DateRange):  # named, so that the partial index ix_search_date is used
        return and_(si.c.lo.is_not(None), _date_cond(si.c.lo, si.c.hi, value))
    if isinstance(value, Number):  # likewise ix_search_num
        return and_(si.c.num.is_not(None), _number_cond(value))
    if isinstance(value, Text):
        return si.c.value.like(value.value.replace("%", "").replace("_", "\\_") + "%", escape="\\")
    raise TypeError(value)


def _clause(rtype: str, c: Clause) -> ColumnElement[bool]:
    if c.kind == "id":
        return resources.c.id.in_([str(v) for v in c.values])
    if c.kind == "site":
        return resources.c.site.in_([str(v) for v in c.values])
    if c.kind == "lastUpdated":
        stamp = func.substr(resources.c.last_updated, 1, 26)
        return or_(*[_date_cond(stamp, stamp, v) for v in c.values if isinstance(v, DateRange)])
    sub = select(si.c.rid).where(si.c.type == rtype, si.c.name == c.name, or_(*[_value_cond(v) for v in c.values]))
    return resources.c.rid.in_(sub)


def query_condition(q: Query) -> ColumnElement[bool]:
    """The SQL condition a resource of ``q.type`` meets when it matches every clause of ``q``
    (Bulk Data ``_typeFilter``). A query with no clause matches everything."""
    return and_(true(), *[_clause(q.type, c) for c in q.clauses])


def _filters(q: Query, snapshot: str, site: str | None = None) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [
        resources.c.type == q.type,
        *([] if site is None else [resources.c.site == site]),
        resources.c.created <= snapshot,
        or_(resources.c.deleted == false(), resources.c.last_updated > snapshot),
    ]
    conds.extend(_clause(q.type, c) for c in q.clauses)
    return conds


def _order(q: Query) -> list[Any]:
    out: list[Any] = []
    for name, desc in q.sort:
        if name == "_id":
            col: Any = resources.c.id
        elif name == "_lastUpdated":
            col = resources.c.last_updated
        else:
            col = select(func.min(si.c.lo)).where(si.c.rid == resources.c.rid, si.c.name == name).scalar_subquery()
        out.append(col.desc() if desc else col.asc())
    out.append(resources.c.id.asc())
    return out


def run_search(conn: Connection, q: Query, snapshot: str, site: str | None = None) -> SearchResult:
    """Run ``q`` as of ``snapshot`` (an instant, see the module docstring). ``site``: only that
    site's resources match or are included (``_include``/``_revinclude``)."""
    where = _filters(q, snapshot, site)
    total = int(conn.execute(select(func.count()).select_from(resources).where(*where)).scalar() or 0)
    if q.summary_count or q.count == 0:
        return SearchResult(total)
    rows = conn.execute(select(resources.c.rid, resources.c.resource).where(*where).order_by(*_order(q))
                        .offset(q.offset).limit(q.count)).all()
    matches = [orjson.loads(t) for _, t in rows]
    return SearchResult(total, matches, _includes(conn, q, matches, [n for n, _ in rows], site))


def _fetch(conn: Connection, keys: set[tuple[str, str]], site: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    by_type: dict[str, list[str]] = {}
    for t, i in sorted(keys):
        by_type.setdefault(t, []).append(i)
    for t, ids in by_type.items():
        for n in range(0, len(ids), 500):
            rows = conn.execute(select(resources.c.resource).where(
                resources.c.type == t, resources.c.id.in_(ids[n:n + 500]), resources.c.deleted == false(),
                *([] if site is None else [resources.c.site == site]))
                .order_by(resources.c.id))
            out.extend(orjson.loads(text) for (text,) in rows)
    return out


def _includes(conn: Connection, q: Query, matches: list[dict[str, Any]], numbers: list[int],
              site: str | None = None) -> list[dict[str, Any]]:
    """The resources ``q``'s ``_include``/``_revinclude`` pull in for ``matches`` (numbered
    ``numbers``, ``resources.rid``), without the matches themselves."""
    if not matches or not (q.include or q.revinclude):
        return []
    ids = [m["id"] for m in matches]
    seen = {(m["resourceType"], m["id"]) for m in matches}
    wanted: set[tuple[str, str]] = set()
    for inc in q.include:
        rows = conn.execute(select(si.c.value).where(si.c.type == inc.source, si.c.name == inc.param, si.c.rid.in_(numbers)))
        for (ref,) in rows:
            t, _, i = ref.partition("/")
            if inc.target is None or inc.target == t:
                wanted.add((t, i))
    keys = [f"{q.type}/{i}" for i in ids]
    for rev in q.revinclude:
        if rev.target is not None and rev.target != q.type:
            continue
        rows = conn.execute(select(resources.c.id).join(si, si.c.rid == resources.c.rid).where(
            si.c.type == rev.source, si.c.name == rev.param, si.c.value.in_(keys)))
        wanted.update((rev.source, i) for (i,) in rows)
    return _fetch(conn, wanted - seen, site)
