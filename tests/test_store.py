"""The Alembic migrations and the SQLAlchemy table definitions describe the same schema (both backends)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text

from adapter.config import Settings
from adapter.ingest import ingest_file
from adapter.outcomes.cohort import PatientCourse, build_cohort
from adapter.store import Store
from adapter.store.courses import COURSE_VERSION
from adapter.store.schema import metadata, patient_course
from tests.conftest import EXAMPLE_FILES


def test_migrations_match_table_definitions(store: Store) -> None:
    assert store.schema_revision() == "0011"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


# --------------------------------------------------------------------------- patient_course table

def _as_json(cohort: list[PatientCourse]) -> list[dict]:
    return [c.to_json() for c in cohort]


def _ingest_examples(store: Store, settings: Settings) -> None:
    for site, mapping, path in EXAMPLE_FILES:
        assert ingest_file(path, site, mapping, store, settings=settings).rows_rejected == 0


def test_stored_courses_equal_the_courses_built_from_the_resources(store: Store, settings: Settings) -> None:
    _ingest_examples(store, settings)
    stored = store.cohort()
    assert len(stored) == 21 and {c.site for c in stored} == {"hito", "huanl"}
    assert _as_json(stored) == _as_json(build_cohort(store.iter_resources()))
    assert _as_json(store.cohort("huanl")) == _as_json(build_cohort(store.iter_resources(site="huanl")))
    # a course survives its JSON round trip exactly
    assert [PatientCourse.from_json(c.to_json()) for c in stored] == stored


def test_courses_follow_every_write(store: Store, settings: Settings) -> None:
    """Deleting a transplant, writing it again, moving a resource to another patient and deleting a
    Patient each change the stored courses in the same transaction; re-posting the unchanged export
    keeps the deletion made since (and says so in its report)."""
    _ingest_examples(store, settings)
    hsct = next(r for r in store.iter_resources("Procedure", site="huanl"))
    pid = hsct["subject"]["reference"].split("/")[1]
    before = {c.patient: c for c in store.cohort()}
    assert before[pid].hsct is not None
    with store.transaction() as tx:
        tx.delete("Procedure", hsct["id"])
    after = {c.patient: c for c in store.cohort()}
    assert after[pid].hsct is None and sum(c.hsct is not None for c in after.values()) == 18
    # re-posting the unchanged export keeps that deletion (the file's row has not changed since the
    # last ingestion) and names it in the report, rather than reverting it in silence
    reports = [ingest_file(path, site, mapping, store, settings=settings) for site, mapping, path in EXAMPLE_FILES]
    assert [r.api_versions_kept for r in reports if r.api_versions_kept] == [[f"Procedure/{hsct['id']}"]]
    kept = next(r for r in reports if r.api_versions_kept)
    assert any(i.severity == "warning" and i.code == "conflict" and hsct["id"] in i.reason for i in kept.issues)
    assert {c.patient: c for c in store.cohort()}[pid].hsct is None
    with store.transaction() as tx:  # written again through the API: the course has it again
        tx.put({**hsct, "meta": {"profile": hsct["meta"]["profile"]}}, "huanl")
    assert _as_json(store.cohort()) == _as_json(list(before.values()))
    # a death moved from one patient to another: both courses change
    death = next(r for r in store.iter_resources("AdverseEvent", site="huanl") if r["event"]["coding"][0]["code"] == "death")
    src = death["subject"]["reference"].split("/")[1]
    dst = next(p for p, c in before.items() if c.site == "huanl" and c.death is None)
    with store.transaction() as tx:
        tx.put({**death, "subject": {"reference": f"Patient/{dst}"}}, "huanl")
    moved = {c.patient: c for c in store.cohort()}
    assert moved[src].death_cause is None and moved[dst].death_cause == before[src].death_cause
    assert _as_json(list(moved.values())) == _as_json(build_cohort(store.iter_resources()))
    # a deleted Patient leaves the cohort
    with store.transaction() as tx:
        tx.delete("Patient", dst)
    assert dst not in {c.patient for c in store.cohort()} and len(store.cohort()) == 20


def test_courses_made_by_other_code_are_rebuilt(store: Store, settings: Settings) -> None:
    _ingest_examples(store, settings)
    expected = _as_json(store.cohort())
    with store.engine.begin() as conn:
        conn.execute(patient_course.update().values(course_version="older-code", course='{"not": "a course"}'))
        conn.execute(patient_course.delete().where(patient_course.c.site == "hito"))
    assert _as_json(store.cohort()) == expected
    with store.engine.connect() as conn:
        assert {v for (v,) in conn.execute(select(patient_course.c.course_version))} == {COURSE_VERSION}


def test_migration_backfills_the_courses(tmp_path: Path, settings: Settings) -> None:
    """A database holding data at revision 0002 gets every course on upgrade to 0003."""
    s = Store(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    s.migrate()
    _ingest_examples(s, settings)
    expected = _as_json(s.cohort())
    _downgrade(s, "0002")  # every later revision's downgrade, with the data in place
    assert s.schema_revision() == "0002"
    s.migrate()
    with s.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(patient_course)).scalar() == 21
    assert _as_json(s.cohort()) == expected


def test_concurrent_writers_to_one_patient_lose_nothing(store: Store, settings: Settings) -> None:
    """Eight transactions each add an adverse event to the same patient at once: the stored course
    holds all eight (PostgreSQL serialises course refreshes per patient; SQLite serialises writers)."""
    _ingest_examples(store, settings)
    pat = next(r for r in store.iter_resources("Patient", site="huanl"))
    template = next(r for r in store.iter_resources("AdverseEvent", site="huanl") if r["event"]["coding"][0]["code"] != "death")
    events_before = len(next(c for c in store.cohort() if c.patient == pat["id"]).adverse_events)
    barrier = threading.Barrier(8)

    def add(i: int) -> None:
        ae = {**template, "id": f"concurrent-ae-{i}", "subject": {"reference": f"Patient/{pat['id']}"}}
        ae.pop("meta", None)
        barrier.wait(timeout=30)
        with store.transaction() as tx:
            tx.put(ae, "huanl")
            time.sleep(0.05)  # widen the window between the write and the commit

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    course = next(c for c in store.cohort() if c.patient == pat["id"])
    assert _as_json([course]) == _as_json([c for c in build_cohort(store.iter_resources()) if c.patient == pat["id"]])
    assert len(course.adverse_events) == events_before + 8


def test_migration_0008_reindexes_dates_written_with_an_offset(store: Store) -> None:
    """Revision 0008 recomputes the index of resources holding a dateTime with a non-zero offset
    (before it, the offset was ignored): a store indexed the old way finds the result on its UTC
    day after the upgrade, and leaves date-only resources as they were."""
    import json

    from adapter.search.query import parse

    obs = json.loads((Path(__file__).resolve().parent.parent / "profiles" / "examples" / "pedall-mrd-1.json").read_text())
    with store.transaction() as tx:
        tx.put({**obs, "id": "mig-offset", "effectiveDateTime": "2031-03-01T01:00:00+05:30"}, "")
        tx.put({**obs, "id": "mig-date", "effectiveDateTime": "2031-03-01"}, "")

    def found(day: str) -> set[str]:
        return {r["id"] for r in store.search(parse("Observation", [("date", day)])).matches}

    assert found("2031-02-28") == {"mig-offset"}
    _downgrade(store, "0007")  # the later revisions' downgrades, with the data in place
    with store.engine.begin() as conn:  # the index as revision 0007 wrote it: the offset ignored
        conn.execute(text("UPDATE search_index SET lo = '2031-03-01T01:00:00.000000', hi = '2031-03-01T01:00:00.999999'"
                          " WHERE id = 'mig-offset' AND name = 'date'"))
    store.migrate()
    assert store.schema_revision() == "0011"
    assert found("2031-02-28") == {"mig-offset"} and found("2031-03-01") == {"mig-date"}


def _downgrade(store: Store, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from adapter.store.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)
    assert store.schema_revision() == revision


def test_migration_0011_numbers_resources_and_keeps_their_index(store: Store, settings: Settings) -> None:
    """Revision 0011 names each search index row's resource by its number (``resources.rid``)
    instead of its type and id. Upgrading a store that holds data keeps every index entry (the
    same entries as before, per resource), numbers every resource once, and searches find what
    they found; downgrading copies the index back."""
    from adapter.search.query import parse

    for site, mapping, path in EXAMPLE_FILES[:2]:  # HITO's two exports
        ingest_file(path, site, mapping, store, settings=settings)
    queries = [("Observation", [("code", "mrd"), ("date", "ge2019-06")]), ("Observation", [("value-quantity", "le0.01")]),
               ("Patient", [("_revinclude", "Observation:subject")]), ("Observation", [("_include", "Observation:subject")]),
               ("Observation", [("_sort", "-date"), ("_count", "7")])]

    def answers() -> list[list[str]]:
        out = []
        for rtype, params in queries:
            r = store.search(parse(rtype, params))
            out.append([f"{m['resourceType']}/{m['id']}" for m in r.matches]
                       + sorted(f"{m['resourceType']}/{m['id']}" for m in r.included))
        return out

    def entries(key: str) -> list[tuple]:
        with store.engine.connect() as conn:
            return sorted(tuple("" if v is None else v for v in r) for r in conn.execute(text(
                f"SELECT r.type, r.id, s.name, s.system, s.value, s.num, s.lo, s.hi FROM search_index s "  # noqa: S608
                f"JOIN resources r ON {key}")))

    before, index = answers(), entries("r.rid = s.rid")
    assert len(index) > 1000 and all(a for a in before)
    _downgrade(store, "0010")
    assert entries("r.type = s.type AND r.id = s.id") == index
    store.migrate()
    assert store.schema_revision() == "0011"
    assert entries("r.rid = s.rid") == index
    with store.engine.connect() as conn:
        total, numbered = conn.execute(text("SELECT count(*), count(DISTINCT rid) FROM resources")).one()
    assert total == numbered > 0
    assert answers() == before
    # a resource created after the upgrade gets a number no stored resource has
    site, mapping, path = EXAMPLE_FILES[2]  # HUANL's
    ingest_file(path, site, mapping, store, settings=settings)
    with store.engine.connect() as conn:
        total2, numbered2 = conn.execute(text("SELECT count(*), count(DISTINCT rid) FROM resources")).one()
    assert total2 == numbered2 > total


def test_date_and_number_searches_can_use_the_partial_indexes(store: Store) -> None:
    """Revision 0010 keeps only rows with a date range (``lo``) in ``ix_search_date`` and rows with a
    number in ``ix_search_num``. A database uses a partial index only when the query implies its
    WHERE clause, so each date or number condition names it: the planner of both backends can pick
    them (PostgreSQL with sequential scans off, as the store's own write transactions run), for
    several prefixes, several values of one parameter, and a quantity with its unit."""
    from sqlalchemy.dialects import postgresql, sqlite

    from adapter.search.query import parse
    from adapter.store.schema import resources
    from adapter.store.search import query_condition

    dialect = postgresql.dialect() if store.engine.dialect.name == "postgresql" else sqlite.dialect()
    for params, index in (([("date", "lt2020-01-01")], "ix_search_date"), ([("date", "ge2019")], "ix_search_date"),
                          ([("date", "2019-04"), ("date", "le2020")], "ix_search_date"),
                          ([("value-quantity", "gt1")], "ix_search_num"),
                          ([("value-quantity", "0.01||%")], "ix_search_num")):
        q = select(resources.c.id).where(query_condition(parse("Observation", params)))
        sql = str(q.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            if dialect.name == "postgresql":
                conn.exec_driver_sql("SET enable_seqscan = off")
                conn.exec_driver_sql("SET enable_bitmapscan = on")
                plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
            else:
                plan = "\n".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        assert index in plan, (params, plan)


def test_a_new_sqlite_database_has_8_kib_pages(tmp_path: Path) -> None:
    """A stored resource is ~2 KB of JSON: with SQLite's default 4 KiB pages one ``resources`` row
    took a page of its own. A new database gets 8 KiB pages; an existing one keeps its own."""
    import sqlite3

    Store(f"sqlite:///{tmp_path}/new.sqlite3").migrate()
    old = sqlite3.connect(tmp_path / "old.sqlite3")
    old.execute("CREATE TABLE t (x)")
    old.commit()
    old.close()
    Store(f"sqlite:///{tmp_path}/old.sqlite3").migrate()
    sizes = {n: sqlite3.connect(tmp_path / f"{n}.sqlite3").execute("PRAGMA page_size").fetchone()[0] for n in ("new", "old")}
    assert sizes == {"new": 8192, "old": 4096}
