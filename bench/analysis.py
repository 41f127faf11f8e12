"""The default analysis plan against the facade (a documented command, not a test).

    .venv/bin/python bench/analysis.py [--patients 10000] [--plan plans/default.yaml]
    make bench-analysis

Clones the example patients to ``--patients`` patients (each with its whole compartment, as
bench/serve.py and bench/views.py clone them), writes them as a Bulk export folder (NDJSON, not
timed), then, in the same run:

1. baseline: today's facade, the extraction of every patient's course and the /outcomes report
   (adapter/outcomes/cohort.py ``course_of``, adapter/outcomes/report.py ``outcomes_report``);
2. end to end: the SQL on FHIR views compiled to SQL on an embedded DuckDB over the export
   folder, then the plan (adapter/analysis/plan.py ``run_plan``) over their rows;
3. the plan alone over the views' rows already materialised (what a store that keeps its view
   tables current, or a second plan over the same export, pays): the issue-19 target is 2 s for
   10,000 patients on DuckDB;
4. the views over the resources handed over in memory (adapter/views/engines.py
   ``run_views_resources``), as ``$evaluate-measure`` and the dashboard ran them over a store
   after every write before they kept their rows by resource;
5. over an SQLite store holding the clones (loaded first, not timed): the store's view rows
   (adapter/analysis/store_plan.py ``StorePlan.rows``) the first time (the views over every
   resource), then after a write of one Patient (the views over the changed resource only).

Each step's wall time, and the peak resident set of a forked child running it (DuckDB's memory
is native, outside tracemalloc). The plan's figures are compared with the facade's
(adapter/analysis/verify.py): the run says whether every figure agrees.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from adapter.analysis.plan import load_plan, run_plan  # noqa: E402
from adapter.analysis.verify import DEFAULT_PLAN, compare_with_outcomes  # noqa: E402
from adapter.views.engines import run_views_duckdb, run_views_resources  # noqa: E402
from adapter.views.figures import load_views  # noqa: E402
from views import child_peak_rss, clone, compartments, facade  # noqa: E402  (bench/views.py)


def timed(label: str, fn: Any, repeat: int = 1) -> Any:
    """Run ``fn`` ``repeat`` times; print the best wall time and a child's peak RSS; return its result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    print(f"  {label:58} {best:7.2f} s   peak RSS of a child running it {child_peak_rss(fn):7,.0f} MiB")  # noqa: T201
    return result


def store_rows(folder: str, data: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Time StorePlan.rows over an SQLite store of ``data``: the first call, then after one write."""
    from adapter.analysis.store_plan import StorePlan
    from adapter.store import Store

    store = Store(f"sqlite:///{folder}/bench-store.sqlite3")
    store.migrate()
    batch: list[tuple[dict[str, Any], str, None]] = []
    for site, res in data:
        batch.extend((r, site, None) for r in res)
    for i in range(0, len(batch), 5000):
        with store.transaction() as tx:
            tx.upsert(batch[i:i + 5000])
    kept = StorePlan(store)
    t0 = time.perf_counter()
    kept.rows()
    full, first = time.perf_counter() - t0, kept_name(kept)
    patient = dict(data[0][1][0])
    patient["gender"] = "female" if patient.get("gender") != "female" else "male"
    with store.transaction() as tx:
        tx.upsert([(patient, data[0][0], None)])
    t0 = time.perf_counter()
    kept.rows()
    after = time.perf_counter() - t0
    print(f"  {'store view rows, the first time (' + first + ')':58} {full:7.2f} s")  # noqa: T201
    print(f"  {'store view rows after one write (' + kept_name(kept) + ')':58} {after:7.2f} s")  # noqa: T201
    store.engine.dispose()


def kept_name(kept: Any) -> str:
    return f"{kept.last_run[0]}, {kept.last_run[1]:,} resources" if kept.last_run else "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=10000)
    ap.add_argument("--plan", type=Path, default=DEFAULT_PLAN)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        templates = compartments(d)
    data = clone(templates, args.patients)
    plan = load_plan(args.plan)
    views = load_views(ROOT / "views")
    resources = sum(len(res) for _, res in data)
    print(f"{args.patients:,} patients, {resources:,} resources (the {len(templates)} example patients cloned); "  # noqa: T201
          f"plan {plan['id']}: {len(plan['figures'])} figures per site and pooled")
    with tempfile.TemporaryDirectory() as d:
        by_type: dict[str, list[str]] = defaultdict(list)
        for _, res in data:
            for r in res:
                by_type[r["resourceType"]].append(json.dumps(r))
        for t, lines in by_type.items():
            (Path(d) / f"{t}.ndjson").write_text("\n".join(lines) + "\n", encoding="utf-8")
        report = timed("baseline: facade (course_of + outcomes_report)", lambda: facade(data))
        result = timed("views on DuckDB over the export + the plan", lambda: run_plan(plan, run_views_duckdb(views, d)))
        rows = run_views_duckdb(views, d)
        again = timed("the plan alone over the views' rows (best of 3)", lambda: run_plan(plan, rows), repeat=3)
        flat = [r for _, res in data for r in res]
        timed("views over resources in memory (every resource)", lambda: run_views_resources(views, flat))
        store_rows(d, data)
    differences = compare_with_outcomes(plan, result, report)
    assert again == result
    print("  every figure agrees with the facade" if not differences else  # noqa: T201
          f"  {len(differences)} figure(s) differ: {differences[:5]}")


if __name__ == "__main__":
    main()
