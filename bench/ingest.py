"""Ingestion throughput benchmark (a documented command, not a test).

    .venv/bin/python bench/ingest.py [--only csv|hl7] [--rows 100000] [--messages 100000]
                                     [--baseline-rows N] [--repeat 3] [--postgres URL]

CSV: repeats the HITO MRD CSV (examples/hito) to N rows (each repetition a new cohort: unique lab
accessions, patient record numbers and shifted dates; see make_csv), then reports rows/s end to end
(read + mapped + validated + stored) on SQLite and PostgreSQL.

HL7 v2: repeats the uk_infants MRD reference laboratory's ORU^R01 feed (24 messages) to N messages
(each repetition a new cohort: unique MSH-10, PID-3 identifiers, OBR-2/OBR-3 order numbers and dates
shifted by whole days; see make_hl7). The registry CSV is repeated likewise and ingested first,
untimed, so every result links to its Patient as in production. Reports messages/s end to end
(split + parsed with python-hl7 + mapped + validated + stored), on one process (one core).

In the same run each part measures a naive baseline on SQLite: per row, build a ``fhir.resources``
R4B model, dump JSON, then one INSERT (on the same mapped resources, so the difference is
validation + storage strategy).
The baseline ingests the same rows as the adapter (``--baseline-rows`` takes fewer, for a quick
look). Until 2026-12-04 it took only the first 5,000 rows, into a nearly empty database, while the
adapter took all of them: two runs that day measured the baseline at 834 rows/s over 5,000 rows
and 742 rows/s over 100,000 (medians of 3).
"""

from __future__ import annotations

import argparse
import csv as csvlib
import io
import itertools
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pgdb import throwaway_database  # noqa: E402
from sqlalchemy import text  # noqa: E402

from adapter.config import Settings, get_settings  # noqa: E402
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


UK = ROOT / "examples" / "uk_infants"


def _shift(stamp: str, days: int) -> str:
    """An HL7 DTM (YYYYMMDD[HHMM]) moved by whole days."""
    fmt = "%Y%m%d%H%M" if len(stamp) == 12 else "%Y%m%d"
    return (datetime.strptime(stamp, fmt) + timedelta(days=days)).strftime(fmt)  # noqa: DTZ007


def make_hl7(messages: int, out: Path) -> int:
    """Repeat the uk_infants feed to ``messages`` messages; returns the number of cohorts. Cohort c
    suffixes every identifier with ``-c`` (MSH-10, each PID-3 repetition's CX.1, OBR-2, OBR-3) and
    shifts MSH-7, OBR-7, OBR-22 and OBX-14 by ``c % 2000`` days, so each message is a new result of a
    new cohort's patient, not a copy."""
    from adapter.readers.hl7v2 import split_messages

    src = [m.decode("utf-8") for m in split_messages((UK / "uk_mrd_lab_ORU_R01.hl7").read_bytes())]
    dated = {"MSH": (6,), "OBR": (7, 22), "OBX": (14,)}  # MSH fields are numbered from MSH-1 = "|"
    with out.open("w", encoding="utf-8", newline="") as fh:
        for i in range(messages):
            cohort, days = i // len(src), (i // len(src)) % 2000
            segs = []
            for seg in src[i % len(src)].split("\r"):
                f = seg.split("|")
                sid = f[0]
                if sid == "MSH":
                    f[9] = f"{f[9]}-{cohort}"
                elif sid == "PID":
                    f[3] = "~".join(r.replace("^", f"-{cohort}^", 1) for r in f[3].split("~"))
                elif sid == "OBR":
                    f[2], f[3] = f"{f[2]}-{cohort}", f"{f[3]}-{cohort}"
                for k in dated.get(sid, ()):
                    if len(f) > k and f[k]:
                        f[k] = _shift(f[k], days)
                segs.append("|".join(f))
            fh.write("\r".join(segs) + "\r")
    return -(-messages // len(src))


def make_registry(cohorts: int, out: Path) -> Path:
    """The registry CSV repeated for ``cohorts`` cohorts, with the same ``-c`` suffix on the study ID,
    hospital number and NHS number as :func:`make_hl7`, so each cohort's results find their Patient."""
    rows = list(csvlib.reader(io.StringIO((UK / "uk_infant_blinatumomab_registry.csv").read_text("utf-8-sig"))))
    header, body = rows[0], rows[1:]
    keys = [header.index(c) for c in ("Study ID", "Hospital number", "NHS number")]
    with out.open("w", encoding="utf-8", newline="") as fh:
        w = csvlib.writer(fh)
        w.writerow(header)
        for c in range(cohorts):
            for r in body:
                r = list(r)
                for k in keys:
                    r[k] = f"{r[k]}-{c}"
                w.writerow(r)
    return out


def _validator(core_invariants: bool) -> Any:
    from adapter.validation import Validator, get_validator

    if core_invariants:
        return get_validator()
    s = get_settings()
    return Validator(s.fhir_schema_path, s.profiles_dir, core_invariants=False)


def _drop(url: str) -> None:
    """Delete a SQLite database and its WAL files once measured: at 100,000 rows each is ~1 GB, and
    a disk filling up with earlier runs' files slows the later ones."""
    if url.startswith("sqlite:///"):
        for f in Path(url[len("sqlite:///"):]).parent.glob(Path(url).name + "*"):
            f.unlink()


def run_adapter(csv: Path, url: str, settings: Settings, core_invariants: bool = True) -> float:
    store = Store(url)
    store.migrate()
    validator = _validator(core_invariants)  # built once per process in a service: not timed (nor are the naive's models)
    t = time.perf_counter()
    report = ingest_file(csv, "hito", "erm_citometria", store, settings=settings, validator=validator)
    dt = time.perf_counter() - t
    assert report.rows_rejected == 0 and report.rows_mapped == report.rows_read
    store.engine.dispose()
    _drop(url)
    return report.rows_read / dt


def run_adapter_hl7(feed: Path, registry: Path, url: str, settings: Settings,
                    core_invariants: bool = True) -> tuple[float, float]:
    """(messages/s of the feed, seconds to ingest the registry first). Every message is one OBX here."""
    store = Store(url)
    store.migrate()
    t = time.perf_counter()
    reg = ingest_file(registry, "uk-infants", "registry", store, settings=settings)
    t_reg = time.perf_counter() - t
    assert reg.rows_rejected == 0, reg.rows_rejected
    validator = _validator(core_invariants)
    t = time.perf_counter()
    report = ingest_file(feed, "uk-infants", "mrd_lab", store, settings=settings, validator=validator)
    dt = time.perf_counter() - t
    assert report.rows_rejected == 0 and report.rows_mapped == report.rows_read, (report.rows_rejected, report.rows_read)
    assert report.unlinked_patients == 0, report.unlinked_patients
    store.engine.dispose()
    _drop(url)
    return report.rows_read / dt, t_reg


def run_naive(csv: Path, url: str, settings: Settings, rows: int,
              site: str = "hito", mapping: str = "erm_citometria", fmt: str = "csv") -> float:
    import json

    from fhir.resources.R4B.observation import Observation

    from adapter.mapping.engine import map_row
    from adapter.readers import reader_for
    from adapter.spec import load_mapping

    store = Store(url)
    store.migrate()
    m = load_mapping(site, mapping, settings.mappings_dir)
    sc = m.site_context(settings.id_key)
    reader = reader_for(fmt)(csv, m.spec.reader)
    t = time.perf_counter()
    n, number = 0, itertools.count(1)  # resources.rid (revision 0011), as the store numbers them
    with store.engine.begin() as conn:
        for row in reader.rows(None, set(m.sheets[0].columns)):
            for res in map_row(row, m.sheets[0], m.ctx, sc).resources:
                body = json.dumps(Observation.model_validate(res).model_dump(mode="json"))
                conn.execute(text("INSERT INTO resources (type, id, version_id, last_updated, site, content_hash,"
                                  " deleted, resource, rid) VALUES (:t, :i, 1, '', :s, '', false, :r, :n)"),
                             {"t": "Observation", "i": res["id"], "s": site, "r": body, "n": next(number)})
            n += 1
            if n >= rows:
                break
    dt = time.perf_counter() - t
    store.engine.dispose()
    _drop(url)
    return n / dt


def bench_csv(d: str, args: argparse.Namespace) -> None:
    """Naive baseline, adapter with and without the R4 core invariants, interleaved ``--repeat``
    times on fresh SQLite databases after one untimed warm-up of each (it loads the mapping, code
    tables, models and compiled expressions once, as a running service has them); the medians are
    compared, since one run on a shared machine varies by +-15 %. Then the adapter once on PostgreSQL."""
    csv = make_csv(args.rows, Path(d) / "hito_erm_citometria_bench.csv")
    settings = Settings(database_url=f"sqlite:///{d}/x.sqlite3", id_key="bench")
    print(f"CSV MRD export (hito/erm_citometria), {args.rows:,} rows; medians of {args.repeat} interleaved runs")
    warm = make_csv(200, Path(d) / "warm.csv")
    run_naive(warm, f"sqlite:///{d}/warm_naive.sqlite3", settings, 200)
    run_adapter(warm, f"sqlite:///{d}/warm_on.sqlite3", settings)
    run_adapter(warm, f"sqlite:///{d}/warm_off.sqlite3", settings, core_invariants=False)
    naive: list[float] = []
    on: list[float] = []
    off: list[float] = []
    baseline_rows = args.baseline_rows or args.rows
    for i in range(args.repeat):
        naive.append(run_naive(csv, f"sqlite:///{d}/naive{i}.sqlite3", settings, baseline_rows))
        on.append(run_adapter(csv, f"sqlite:///{d}/bench{i}.sqlite3", settings))
        off.append(run_adapter(csv, f"sqlite:///{d}/bench_off{i}.sqlite3", settings, core_invariants=False))
    runs = lambda xs: ", ".join(f"{x:,.0f}" for x in xs)  # noqa: E731
    n, a, o = statistics.median(naive), statistics.median(on), statistics.median(off)
    pairs = ", ".join(f"{x / y:.2f}x" for x, y in zip(on, naive, strict=True))
    print(f"  naive baseline (model + dump + INSERT per row), SQLite: {n:,.0f} rows/s ({baseline_rows:,} rows; runs {runs(naive)})")
    print(f"  adapter, SQLite:     {a:,.0f} rows/s  = {a / n:.1f}x baseline  (runs {runs(on)}; each run against the "
          f"baseline run before it: {pairs})")
    print(f"  adapter, SQLite, R4 core invariants off: {o:,.0f} rows/s  = {o / n:.1f}x  (runs {runs(off)}; checking "
          f"them costs {100 * (o - a) / o:.1f} % of throughput)")
    print("  target: adapter >= 3x baseline")
    with throwaway_database(args.postgres) as url:
        pg = run_adapter(csv, url, settings)
    print(f"  adapter, PostgreSQL: {pg:,.0f} rows/s  = {pg / n:.1f}x baseline")


def bench_hl7(d: str, args: argparse.Namespace) -> None:
    feed = Path(d) / "uk_mrd_lab_ORU_R01_bench.hl7"
    cohorts = make_hl7(args.messages, feed)
    registry = make_registry(cohorts, Path(d) / "uk_registry_bench.csv")
    settings = Settings(database_url=f"sqlite:///{d}/x.sqlite3", id_key="bench")
    print(f"HL7 v2 ORU^R01 feed (uk-infants/mrd_lab), {args.messages:,} messages, {cohorts * 11:,} registry patients")
    baseline_rows = args.baseline_rows or args.messages
    naive = run_naive(feed, f"sqlite:///{d}/naive_hl7.sqlite3", settings, baseline_rows,
                      "uk-infants", "mrd_lab", "hl7v2")
    print(f"  naive baseline (model + dump + INSERT per message), SQLite: {naive:,.0f} msg/s ({baseline_rows:,} messages)")
    sqlite, reg = run_adapter_hl7(feed, registry, f"sqlite:///{d}/bench_hl7.sqlite3", settings)
    print(f"  adapter, SQLite:     {sqlite:,.0f} msg/s  = {sqlite / naive:.1f}x baseline  (registry first, untimed: {reg:.0f} s)")
    off, _ = run_adapter_hl7(feed, registry, f"sqlite:///{d}/bench_hl7_off.sqlite3", settings, core_invariants=False)
    print(f"  adapter, SQLite, R4 core invariants off: {off:,.0f} msg/s  (checking them costs "
          f"{100 * (off - sqlite) / off:.1f} % of throughput)")
    with throwaway_database(args.postgres) as url:
        pg, reg = run_adapter_hl7(feed, registry, url, settings)
    print(f"  adapter, PostgreSQL: {pg:,.0f} msg/s  = {pg / naive:.1f}x baseline  (registry first, untimed: {reg:.0f} s)")
    print("  target: >= 5,000 msg/s per core (the ingest runs on one core)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["csv", "hl7"], default=None, help="run one part only")
    ap.add_argument("--rows", type=int, default=100_000, help="CSV rows")
    ap.add_argument("--messages", type=int, default=100_000, help="HL7 v2 messages")
    ap.add_argument("--baseline-rows", type=int, default=None,
                    help="rows (messages) for the naive baselines (default: all of them, as the adapter)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of the CSV part (medians reported)")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if args.only in (None, "csv"):
            bench_csv(d, args)
        if args.only in (None, "hl7"):
            bench_hl7(d, args)


if __name__ == "__main__":
    main()
