"""Ingestion throughput benchmark (a documented command, not a test).

    .venv/bin/python bench/ingest.py [--rows 100000] [--baseline-rows 5000] [--postgres URL]

Repeats the HITO MRD CSV (examples/hito) to N rows (each repetition a new cohort: unique lab
accessions, patient record numbers and shifted dates; see make_csv), then
reports rows/s end to end (read + mapped + validated + stored) on SQLite and PostgreSQL. In the same
run it measures a naive baseline on SQLite: per row, build a ``fhir.resources`` R4B model, dump JSON,
then one INSERT (on the same mapped resources, so the difference is validation + storage strategy).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, text  # noqa: E402

from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.store import Store  # noqa: E402


def make_csv(rows: int, out: Path) -> Path:
    """Repeat the example's data rows to ``rows``. Each repetition is a new cohort: unique lab
    accessions (Folio), new patient record numbers (Expediente) and sample dates shifted by whole
    days, so memoised lookups and ids hit only as often as in a real export (a patient has a few
    results), never on a copied row."""
    src = (ROOT / "examples" / "hito" / "hito_erm_citometria.csv").read_bytes().decode("cp1252").splitlines()
    header, body = src[0], src[1:]
    cols = header.split(";")
    folio, record = cols.index("Folio"), cols.index("Expediente")
    dates = [cols.index("Fecha de toma"), cols.index("Fecha de liberación")]
    with out.open("w", encoding="cp1252", newline="") as fh:
        fh.write(header + "\r\n")
        for i in range(rows):
            cohort = i // len(body)
            line = body[i % len(body)].split(";")
            line[folio] = f"BX-{i:08d}"
            line[record] = f"{line[record]}-{cohort}"
            for c in dates:
                day = datetime.strptime(line[c], "%d/%m/%Y") + timedelta(days=cohort % 2000)  # noqa: DTZ007
                line[c] = day.strftime("%d/%m/%Y")
            fh.write(";".join(line) + "\r\n")
    return out


def run_adapter(csv: Path, url: str, settings: Settings) -> float:
    store = Store(url)
    store.migrate()
    t = time.perf_counter()
    report = ingest_file(csv, "hito", "erm_citometria", store, settings=settings)
    dt = time.perf_counter() - t
    assert report.rows_rejected == 0 and report.rows_mapped == report.rows_read
    store.engine.dispose()
    return report.rows_read / dt


def run_naive(csv: Path, url: str, settings: Settings, rows: int) -> float:
    import json

    from fhir.resources.R4B.observation import Observation

    from adapter.mapping.engine import map_row
    from adapter.readers import reader_for
    from adapter.spec import load_mapping

    store = Store(url)
    store.migrate()
    m = load_mapping("hito", "erm_citometria", settings.mappings_dir)
    sc = m.site_context(settings.id_key)
    reader = reader_for("csv")(csv, m.spec.reader)
    t = time.perf_counter()
    n = 0
    with store.engine.begin() as conn:
        for row in reader.rows(None, set(m.sheets[0].columns)):
            for res in map_row(row, m.sheets[0], m.ctx, sc).resources:
                body = json.dumps(Observation.model_validate(res).model_dump(mode="json"))
                conn.execute(text("INSERT INTO resources (type, id, version_id, last_updated, site, content_hash,"
                                  " deleted, resource) VALUES (:t, :i, 1, '', 'hito', '', false, :r)"),
                             {"t": "Observation", "i": res["id"], "r": body})
            n += 1
            if n >= rows:
                break
    dt = time.perf_counter() - t
    store.engine.dispose()
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--baseline-rows", type=int, default=5_000)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        csv = make_csv(args.rows, Path(d) / "hito_erm_citometria_bench.csv")
        settings = Settings(database_url=f"sqlite:///{d}/x.sqlite3", id_key="bench")
        naive = run_naive(csv, f"sqlite:///{d}/naive.sqlite3", settings, args.baseline_rows)
        print(f"naive baseline (model + dump + INSERT per row), SQLite: {naive:,.0f} rows/s ({args.baseline_rows} rows)")
        sqlite = run_adapter(csv, f"sqlite:///{d}/bench.sqlite3", settings)
        print(f"adapter, SQLite:     {sqlite:,.0f} rows/s ({args.rows} rows)  = {sqlite / naive:.1f}x baseline")
        name = f"bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            pg = run_adapter(csv, args.postgres.rsplit("/", 1)[0] + "/" + name, settings)
            print(f"adapter, PostgreSQL: {pg:,.0f} rows/s ({args.rows} rows)  = {pg / naive:.1f}x baseline")
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
