"""SQL on FHIR views, reference runner, against the facade's Python (a documented command, not a test).

    .venv/bin/python bench/views.py [--patients 2000] [--engines reference,duckdb,spark]
    make bench-views          # 2,000 patients, every engine
    .venv/bin/python bench/views.py --patients 8600 --engines duckdb,spark   # the 100x export of issue 19

Ingests every example export into a scratch SQLite store, clones its patients (each with its whole
compartment, references rewritten to the clone) to ``--patients`` patients in memory, then, in the
same run, computes the figures two ways over the same resources and checks they agree:

1. baseline: the facade's extraction (adapter/outcomes/cohort.py ``course_of`` per patient) and
   report (adapter/outcomes/report.py ``outcomes_report``), as ``/outcomes`` does;
2. the project's ViewDefinitions (views/) on the reference runner (adapter/views/runner.py,
   FHIRPath by fhirpathpy), then the default plan (plans/default.yaml: the facade's figures as
   an analysis plan, adapter/analysis/plan.py) over their rows;
3. the same views compiled to SQL (adapter/views/sql.py) on an embedded DuckDB reading the
   resources as a Bulk export folder (NDJSON written first, not timed), then the default plan;
4. the views compiled to Spark SQL (adapter/views/spark.py) on Spark local[2] reading the same
   folder (the session's start is not timed; its JVM's peak resident set is reported).

Reports wall time, resources/s and the peak of Python memory (tracemalloc, in a second run) for
each. The baseline computes every figure of /outcomes (Kaplan-Meier, confidence intervals), the
views and the default plan the same figures but the vial costs. The reference runner is the correctness oracle. DuckDB's memory is native, outside
tracemalloc: its step also runs in a forked child whose peak resident set size is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapter.analysis.plan import load_plan, run_plan  # noqa: E402
from adapter.analysis.verify import DEFAULT_PLAN, compare_with_outcomes  # noqa: E402
from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.outcomes.cohort import course_of  # noqa: E402
from adapter.outcomes.report import outcomes_report  # noqa: E402
from adapter.store import Store  # noqa: E402
from adapter.views.engines import run_views_duckdb  # noqa: E402
from adapter.views.figures import load_views, run_views  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from serve import _rewrite  # noqa: E402  (references rewritten to the clone, as bench/serve.py clones)

from tests.conftest import ALL_EXAMPLE_FILES as FILES  # noqa: E402  (every example export, as `make run` ingests them)


def compartments(folder: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(site, the Patient and its compartment) of every example patient."""
    settings = Settings(database_url=f"sqlite:///{folder}/x.sqlite3", id_key="bench-id-key", pseudonym_key="bench-pseudonym-key",
                        export_dir=Path(folder))
    store = Store(f"sqlite:///{folder}/templates.sqlite3")
    store.migrate()
    for site, mapping, path in FILES:
        ingest_file(path, site, mapping, store, settings=settings)
    out = [(str(p["managingOrganization"]["reference"]).split("/")[1], [p, *store.compartment(p["id"])])
           for p in store.iter_resources("Patient")]
    store.engine.dispose()
    return out


def clone(templates: list[tuple[str, list[dict[str, Any]]]], patients: int) -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for n in range(patients):
        site, src = templates[n % len(templates)]
        ids = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/c{n}-{i}" for i, r in enumerate(src)}
        copies = []
        for r in src:
            c = _rewrite(copy.deepcopy(r), ids)
            c["id"] = ids[f"{r['resourceType']}/{r['id']}"].split("/")[1]
            copies.append(c)
        out.append((site, copies))
    return out


def facade(cohort_input: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    courses = []
    for site, res in cohort_input:
        by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in res[1:]:
            by_type[r["resourceType"]].append(r)
        c = course_of(res[0], by_type, site)
        if c.start is not None:
            courses.append(c)
    return outcomes_report(sorted(courses, key=lambda c: (c.site, c.patient)))


def measure(label: str, fn: Any, resources: int) -> Any:
    """Run ``fn`` twice: timed, then under tracemalloc for the peak (tracing slows Python down)."""
    t0 = time.perf_counter()
    result = fn()
    wall = time.perf_counter() - t0
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print(f"  {label:44} {wall:7.2f} s  {resources / wall:9,.0f} resources/s  peak {peak / 2**20:7.1f} MiB")  # noqa: T201
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--engines", default="reference,duckdb,spark", help="comma-separated: reference, duckdb, spark")
    args = ap.parse_args()
    engines = set(args.engines.split(","))
    with tempfile.TemporaryDirectory() as d:
        templates = compartments(d)
    data = clone(templates, args.patients)
    flat = [r for _, res in data for r in res]
    print(f"{args.patients:,} patients, {len(flat):,} resources (the {len(templates)} example patients cloned)")  # noqa: T201
    report = measure("facade (course_of + outcomes_report)", lambda: facade(data), len(flat))
    views = load_views(ROOT / "views")
    plan = load_plan(DEFAULT_PLAN)

    def compare(result: dict[str, Any], facade_report: dict[str, Any]) -> list[str]:
        return compare_with_outcomes(plan, result, facade_report)

    def figures_from_views(rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
        return run_plan(plan, rows)

    if "reference" in engines:
        figures = measure("views on the reference runner (fhirpathpy)", lambda: figures_from_views(run_views(views, flat)), len(flat))
        differences = compare(figures, report)
        print("  figures agree" if not differences else f"  {len(differences)} figure(s) differ: {differences[:5]}")  # noqa: T201
    with tempfile.TemporaryDirectory() as d:
        by_type: dict[str, list[str]] = defaultdict(list)
        for r in flat:
            by_type[r["resourceType"]].append(json.dumps(r))
        for t, lines in by_type.items():
            (Path(d) / f"{t}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if "duckdb" in engines:
            duck = measure("views compiled to SQL on DuckDB", lambda: figures_from_views(run_views_duckdb(views, d)), len(flat))
            print(f"  {'':44} peak RSS of a child running it: {child_peak_rss(lambda: run_views_duckdb(views, d)):,.0f} MiB")  # noqa: T201
            differences = compare(duck, report)
            print("  figures agree" if not differences else f"  {len(differences)} figure(s) differ: {differences[:5]}")  # noqa: T201
        if "spark" in engines:
            from adapter.views.spark import load_export_spark, run_spark, spark_session

            spark = spark_session("local[2]")
            spark.sparkContext.setLogLevel("ERROR")

            def on_spark() -> dict[str, Any]:
                load_export_spark(spark, d)
                return figures_from_views({name: run_spark(v.view, spark) for name, v in views.items()})

            on_spark()  # warm-up: the JVM's code generation and caches, as a long-running service has them
            t0 = time.perf_counter()
            sp = on_spark()
            wall = time.perf_counter() - t0
            print(f"  {'views compiled to Spark SQL (local[2])':44} {wall:7.2f} s  {len(flat) / wall:9,.0f} resources/s  "  # noqa: T201
                  f"JVM peak RSS {jvm_peak_rss():,.0f} MiB")
            differences = compare(sp, report)
            print("  figures agree" if not differences else f"  {len(differences)} figure(s) differ: {differences[:5]}")  # noqa: T201
            spark.stop()


def jvm_peak_rss() -> float:
    """Peak resident set (VmHWM, MiB) of the java processes this process started (Spark's JVM)."""
    import os

    me, peak = os.getpid(), 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
        if b"java" in cmd.split(b"\0")[0] and ppid in (me, *_children(me)):
            hwm = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
            peak = max(peak, int(hwm.split()[1]) / 1024)
    return peak


def _children(pid: int) -> list[int]:
    import os

    out = []
    for p in filter(str.isdigit, os.listdir("/proc")):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        if int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1]) == pid:
            out.append(int(p))
    return out


def child_peak_rss(fn: Any) -> float:
    """Peak resident set size (MiB) of a forked child that runs ``fn``."""
    import os
    import resource

    pid = os.fork()
    if pid == 0:
        fn()
        os._exit(0)
    _, _, usage = os.wait4(pid, 0)
    return usage.ru_maxrss / 1024 if resource else 0.0


if __name__ == "__main__":
    main()
