"""Bulk export memory and speed benchmark (a documented command, not a test).

    .venv/bin/python bench/export.py [--small 20000] [--large 200000] [--postgres URL]

Fills two new PostgreSQL databases with ``--small`` and ``--large`` resources (the example
patients' resources cloned under new ids, written straight into the resources table: only the
export reads it), then runs the system-level export (adapter/bulk/runner.py ``write_export``) on
each and reports resources/s and the peak of Python memory (tracemalloc) during the export. The
baseline, measured in the same run on the small database, is the naive export that reads every
resource into a list before writing the files, the pattern that makes HAPI run out of memory
(hapi-fhir#8374). Target (issue 5): the streaming export's peak does not grow with the size.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import orjson  # noqa: E402
from pgdb import throwaway_database  # noqa: E402
from serve import _rewrite, templates  # noqa: E402

from adapter.bulk.request import ExportRequest  # noqa: E402
from adapter.bulk.runner import write_export  # noqa: E402
from adapter.config import Settings  # noqa: E402
from adapter.store import Store  # noqa: E402
from adapter.store.db import _search_columns, content_hash, now_instant  # noqa: E402
from adapter.store.schema import resources  # noqa: E402


def fill(store: Store, tmpl: list[list[dict[str, Any]]], total: int) -> None:
    """Clone the example patients until ``total`` resources are in the resources table."""
    now, n, rows = now_instant(), 0, []
    with store.engine.begin() as conn:
        k = 0
        while n < total:
            src = tmpl[k % len(tmpl)]
            ids = {f"{r['resourceType']}/{r['id']}": f"{r['resourceType']}/e{k}-{i}" for i, r in enumerate(src)}
            site = src[0]["managingOrganization"]["reference"].split("/")[1]
            for r in src[: total - n]:
                c = _rewrite(copy.deepcopy(r), ids)
                c["id"] = ids[f"{r['resourceType']}/{r['id']}"].split("/", 1)[1]
                c["meta"] = {"versionId": "1", "lastUpdated": now}
                rows.append({"type": c["resourceType"], "id": c["id"], "version_id": 1, "last_updated": now, "site": site,
                             "content_hash": content_hash(c), "deleted": False, "resource": orjson.dumps(c).decode(),
                             "created": now, "rid": n + 1, **_search_columns(c)})
                n += 1
            k += 1
            if len(rows) >= 5000:
                conn.execute(resources.insert(), rows)
                rows = []
        if rows:
            conn.execute(resources.insert(), rows)


def measure(fn: Any) -> tuple[float, float]:
    """(seconds, peak MiB of Python allocations) of ``fn()``."""
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return dt, peak


def streaming(store: Store, settings: Settings, folder: Path) -> int:
    folder.mkdir()
    m = write_export(store, settings, ExportRequest("system"), folder, transaction_time=now_instant(),
                     request_url="bench", url_for=lambda name: name, beat=lambda _p, _f: True)
    return sum(o["count"] for o in m["output"])


def naive(store: Store, folder: Path) -> int:
    """Every resource read into memory, then one NDJSON file per type."""
    folder.mkdir()
    everything = list(store.iter_resources())
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in everything:
        by_type.setdefault(r["resourceType"], []).append(r)
    for t, rs in by_type.items():
        (folder / f"{t}.ndjson").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rs))
    return len(everything)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=200_000)
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        settings = Settings(database_url="sqlite://", id_key="bench", export_dir=Path(d))
        tmpl = templates(settings, d)
        for size in (args.small, args.large):
            with throwaway_database(args.postgres, "bench_export") as url:
                store = Store(url)
                store.migrate()
                fill(store, tmpl, size)
                dt, peak = measure(lambda: streaming(store, settings, Path(d) / f"s{size}"))  # noqa: B023
                print(f"streaming export, {size:,} resources: {size / dt:,.0f} resources/s, peak {peak:.1f} MiB")
                if size == args.small:
                    dt, peak = measure(lambda: naive(store, Path(d) / f"n{size}"))  # noqa: B023
                    print(f"naive baseline (all in memory), {size:,} resources: {size / dt:,.0f} resources/s, "
                          f"peak {peak:.1f} MiB")
                store.engine.dispose()

if __name__ == "__main__":
    main()
