"""Fixtures: a fresh store on each backend (SQLite file; a PostgreSQL database created and dropped
per test module), and the example exports ingested into it.

PostgreSQL is required: a missing server fails the tests, it never skips them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapter.config import Settings
from adapter.ingest import ingest_file
from adapter.store import Store
from tests.server import Server, _post_export

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PG_URL = os.environ.get("ADAPTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

EXAMPLE_FILES = [
    ("hito", "seguimiento", EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx"),
    ("hito", "erm_citometria", EXAMPLES / "hito" / "hito_erm_citometria.csv"),
    ("huanl", "curso_corto", EXAMPLES / "huanl" / "huanl_blinatumomab_curso_corto.xlsx"),
]
#: Every example export, as `make run` ingests them (site, mapping, file).
ALL_EXAMPLE_FILES = [
    *EXAMPLE_FILES,
    ("uk-infants", "registry", EXAMPLES / "uk_infants" / "uk_infant_blinatumomab_registry.csv"),
    ("uk-infants", "mrd_lab", EXAMPLES / "uk_infants" / "uk_mrd_lab_ORU_R01.hl7"),
    ("cdmx-a", "redcap", EXAMPLES / "mx_multicentro" / "CDMX-A" / "BlinaLLAMulticentro_DATA_2025-01-15_1032.csv"),
    ("cdmx-b", "lab_erm", EXAMPLES / "mx_multicentro" / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7"),
    ("cdmx-b", "eventos", EXAMPLES / "mx_multicentro" / "CDMX-B" / "eventos_clinicos_CDMX-B.csv"),
    ("cdmx-c", "cohort_csv", EXAMPLES / "mx_multicentro" / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv"),
    ("qro-a", "base_xlsx", EXAMPLES / "mx_multicentro" / "QRO-A" / "base_blinatumomab_QRO-A.xlsx"),
    ("suzhou", "research_workbook", EXAMPLES / "suzhou" / "suzhou_research_workbook.xlsx"),
]


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path_factory.mktemp('db') / 'unused.sqlite3'}",
                    id_key="test-id-key", pseudonym_key="test-pseudonym-key",
                    export_dir=tmp_path_factory.mktemp("exports"), audit_spool_dir=tmp_path_factory.mktemp("audit-spool"))


@contextmanager
def pg_database(prefix: str = "adapter_test") -> Iterator[str]:
    """The URL of a PostgreSQL database created for the caller and dropped (with its connections)
    afterwards. PostgreSQL is required: an unreachable server fails the test, never skips it."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        pytest.fail(f"PostgreSQL is required for the test suite and is not reachable at {PG_URL}: {exc}")
    try:
        yield PG_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _pg_store() -> Iterator[Store]:
    with pg_database() as url:
        store = Store(url)
        try:
            store.migrate()
            yield store
        finally:
            store.engine.dispose()


@contextmanager
def _store_on(backend: str, folder: Path) -> Iterator[Store]:
    """An empty, migrated store: an SQLite file in ``folder``, or a PostgreSQL database created
    for it and dropped afterwards."""
    if backend == "sqlite":
        s = Store(f"sqlite:///{folder / 'store.sqlite3'}")
        s.migrate()
        try:
            yield s
        finally:
            s.engine.dispose()
    else:
        yield from _pg_store()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """An empty, migrated store on each backend."""
    with _store_on(request.param, tmp_path) as s:
        yield s


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                 settings: Settings) -> Iterator[Store]:
    """A store (each backend) holding every example export, ingested once per test module."""
    with _store_on(request.param, tmp_path_factory.mktemp("loaded")) as s:
        for site, mapping, path in EXAMPLE_FILES:
            report = ingest_file(path, site, mapping, s, settings=settings)
            assert report.rows_rejected == 0, report.operation_outcome()
        yield s


@contextmanager
def posted(backend: str, folder: Path, settings: Settings, files: list[tuple[str, str, Path]],
           max_upload_bytes: int = 2_000_000) -> Iterator[Server]:
    """A real server on an empty store of ``backend``, with ``files`` (site, mapping, path) posted
    through ``POST /$ingest``, each answered 200."""
    with _store_on(backend, folder) as store:
        srv = Server(store, settings.model_copy(update={"max_upload_bytes": max_upload_bytes}))
        try:
            for site, mapping, path in files:
                r = _post_export(srv.client, path, site, mapping)
                assert r.status_code == 200, r.text[:500]
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    """A server on each backend, with every example export posted through ``POST /$ingest``."""
    with posted(request.param, tmp_path_factory.mktemp("api"), settings, EXAMPLE_FILES, 1_000_000) as srv:
        yield srv


from tests.secure import secure  # noqa: E402, F401  (the auth-on server fixture, shared by the security test modules)
