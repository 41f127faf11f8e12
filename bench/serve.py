"""Service latency benchmark (a documented command, not a test).

    .venv/bin/python bench/serve.py [--patients 10000] [--per-patient 100] [--postgres URL]

Loads a synthetic network into a new PostgreSQL database: the example exports are ingested once, and
each of their patients' resources is cloned under new ids (``--patients`` in all, about
``--per-patient`` resources each, MRD results repeated to reach it). Then a real uvicorn server is
driven over HTTP and the script reports p50/p95/p99 latency of read by id, a patient-scoped MRD
search and ``Patient/$everything``, and the time of a pooled outcomes report. The baselines, measured
in the same run on the same database, are the store called directly (no HTTP, no FastAPI) and, for
outcomes, the cohort built from every stored resource instead of the patient_course table.
Targets (issue 3): read p95 <= 10 ms, patient-scoped search p95 <= 50 ms, outcomes <= 2 s.
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import httpx  # noqa: E402
import uvicorn  # noqa: E402
from pgdb import throwaway_database  # noqa: E402

from adapter.api import create_app  # noqa: E402
from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.outcomes import build_cohort, outcomes_report  # noqa: E402
from adapter.search.query import parse  # noqa: E402
from adapter.store import Store  # noqa: E402

EXAMPLES = [("hito", "seguimiento", "hito/hito_seguimiento_blinatumomab.xlsx"),
            ("hito", "erm_citometria", "hito/hito_erm_citometria.csv"),
            ("huanl", "curso_corto", "huanl/huanl_blinatumomab_curso_corto.xlsx")]


def _rewrite(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        return {k: (ids.get(v, v) if k == "reference" and isinstance(v, str) else _rewrite(v, ids)) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite(v, ids) for v in node]
    return node


def templates(settings: Settings, d: str) -> list[list[dict[str, Any]]]:
    """Each example patient's resources (Patient first), from a scratch SQLite store."""
    s = Store(f"sqlite:///{d}/templates.sqlite3")
    s.migrate()
    for site, mapping, path in EXAMPLES:
        ingest_file(ROOT / "examples" / path, site, mapping, s, settings=settings)
    out = []
    for p in s.iter_resources("Patient"):
        res = [p, *s.compartment(p["id"])]
        for r in res:
            r.pop("meta", None)
        out.append(res)
    s.engine.dispose()
    return out


def load(store: Store, tmpl: list[list[dict[str, Any]]], patients: int, per_patient: int) -> tuple[int, list[str]]:
    """Clone templates into ``store``; returns (resources written, patient ids)."""
    total, pids, batch = 0, [], []
    t0 = time.perf_counter()
    for n in range(patients):
        src = tmpl[n % len(tmpl)]
        ids = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/b{n}-{i}" for i, r in enumerate(src)}
        clones = []
        for r in src:
            c = _rewrite(copy.deepcopy(r), ids)
            c["id"] = ids[f"{r['resourceType']}/{r['id']}"].split("/", 1)[1]
            clones.append(c)
        mrd = [c for c in clones if c["resourceType"] == "Observation" and "valueQuantity" in c]
        k = 0
        while len(clones) < per_patient and mrd:
            extra = copy.deepcopy(mrd[k % len(mrd)])
            extra["id"] = f"b{n}-x{k}"
            clones.append(extra)
            k += 1
        site = src[0]["managingOrganization"]["reference"].split("/")[1]
        batch += [(c, site, None) for c in clones]
        pids.append(clones[0]["id"])
        if len(batch) >= 20_000:
            with store.transaction() as tx:
                tx.upsert(batch)
            total += len(batch)
            batch = []
            print(f"  loaded {total:,} resources ({total / (time.perf_counter() - t0):,.0f}/s)", flush=True)
    if batch:
        with store.transaction() as tx:
            tx.upsert(batch)
        total += len(batch)
    with store.engine.begin() as c:
        c.exec_driver_sql("ANALYZE")
    return total, pids


def pct(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:6.1f} ms  p95 {q[94] * 1000:6.1f} ms  p99 {q[98] * 1000:6.1f} ms  (n={len(samples)})"


def timed(fn: Any, args: list[Any]) -> list[float]:
    out = []
    for a in args:
        t = time.perf_counter()
        fn(a)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--per-patient", type=int, default=100)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    with throwaway_database(args.postgres, "bench_serve") as db_url:
        with tempfile.TemporaryDirectory() as d:
            settings = Settings(database_url=f"sqlite:///{d}/unused.sqlite3", id_key="bench")
            store = Store(db_url)
            store.migrate()
            t = time.perf_counter()
            n, pids = load(store, templates(settings, d), args.patients, args.per_patient)
            print(f"loaded {n:,} resources for {len(pids):,} patients in {time.perf_counter() - t:.0f} s")
            server = uvicorn.Server(uvicorn.Config(create_app(settings, store), host="127.0.0.1", port=8799,
                                                   log_level="warning", access_log=False))
            threading.Thread(target=server.run, daemon=True).start()
            while not server.started:
                time.sleep(0.05)
            rnd = random.Random(1)
            sample = [rnd.choice(pids) for _ in range(args.samples)]
            with httpx.Client(base_url="http://127.0.0.1:8799", timeout=120) as client:
                client.get(f"/Patient/{sample[0]}")  # warm up
                print("baseline (store called directly, no HTTP):")
                print("  read by id          ", pct(timed(lambda p: store.read("Patient", p), sample)))
                print("  patient MRD search  ", pct(timed(lambda p: store.search(parse("Observation", [
                    ("patient", p), ("code", "mrd")])), sample)))
                print("service over HTTP:")
                print("  read by id          ", pct(timed(lambda p: client.get(f"/Patient/{p}").raise_for_status(), sample)))
                print("  patient MRD search  ", pct(timed(lambda p: client.get(
                    "/Observation", params={"patient": p, "code": "mrd", "_count": 100}).raise_for_status(), sample)))
                print("  Patient/$everything ", pct(timed(lambda p: client.get(f"/Patient/{p}/$everything").raise_for_status(),
                                                          sample[: max(20, args.samples // 3)])))
                runs = []
                for _ in range(3):
                    t = time.perf_counter()
                    rep = client.get("/outcomes", params={"timepoint": 36, "suppress": "false"}).raise_for_status().json()
                    runs.append(time.perf_counter() - t)
                print(f"  pooled outcomes     {statistics.median(runs):.2f} s (median of 3; {', '.join(f'{r:.2f}' for r in runs)})"
                      f" for {rep['pooled']['n']:,} patients, from the patient_course table")
            t = time.perf_counter()
            old = outcomes_report(build_cohort(store.iter_resources()), 36.0)
            print(f"baseline: pooled outcomes from every stored resource (no course table) {time.perf_counter() - t:.2f} s"
                  f" for {old['pooled']['n']:,} patients; same figures: {old['pooled'] == rep['pooled']}")
            server.should_exit = True
            store.engine.dispose()


if __name__ == "__main__":
    main()
