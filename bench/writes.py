"""Transaction latency through the write path (a documented command, not a test).

    .venv/bin/python bench/writes.py [--bundles 20] [--postgres URL]

Ingests the HITO MRD export, then posts ``--bundles`` transaction Bundles of 10 new MRD
Observations each through ``adapter.api.writes.process_bundle`` (validation, conditional logic,
store, subscription outbox, course refresh), on SQLite and (with --postgres) a throwaway
PostgreSQL database. The baseline, in the same run, validates each resource's R4 schema with the
pure-Python reference engine, as every API write did before; the measured path uses jsonschema-rs
(the R4B model still checks every resource in full).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from pgdb import database_urls  # noqa: E402

from adapter.api import writes  # noqa: E402
from adapter.config import Settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.store import Store  # noqa: E402
from adapter.validation import get_validator  # noqa: E402


class _Reference:
    """The validator as API writes used it before: the schema on the pure-Python engine."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def validate(self, resource: dict[str, Any], full: bool = False, reference: bool | None = None) -> Any:
        return self.inner.validate(resource, full=True, reference=True)


def _bundle(template: dict[str, Any]) -> dict[str, Any]:
    entries = []
    for _ in range(10):
        o = copy.deepcopy(template)
        o.pop("id")
        o["meta"] = {"profile": template["meta"]["profile"]}
        o["identifier"] = [{"system": "urn:bench", "value": str(uuid.uuid4())}]
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": o, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def run(url: str, n: int) -> None:
    store = Store(url)
    store.migrate()
    settings = Settings(database_url=url, export_dir=Path(tempfile.mkdtemp()))
    ingest_file(ROOT / "examples/hito/hito_erm_citometria.csv", "hito", "erm_citometria", store, settings=settings)
    template = next(store.iter_resources("Observation"))
    fast = get_validator()
    for name, validator in (("baseline (reference schema engine)", _Reference(fast)), ("jsonschema-rs schema, full model", fast)):
        writes.process_bundle(store, validator, _bundle(template), "http://bench")  # warm-up
        times = []
        for _ in range(n):
            t = time.perf_counter()
            writes.process_bundle(store, validator, _bundle(template), "http://bench")
            times.append(time.perf_counter() - t)
        print(f"{store.engine.dialect.name:10} {name:36} median {statistics.median(times) * 1000:7.1f} ms"  # noqa: T201
              f"  max {max(times) * 1000:7.1f} ms per 10-entry transaction")
    store.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=20)
    ap.add_argument("--postgres", help="a PostgreSQL server URL (a throwaway database is made on it)")
    args = ap.parse_args()
    for url in database_urls(args.postgres):
        run(url, args.bundles)


if __name__ == "__main__":
    main()
