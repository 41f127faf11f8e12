"""Transaction latency through the write path (a documented command, not a test).

    .venv/bin/python bench/writes.py [--bundles 20] [--postgres URL]

Ingests the HITO exports, then posts ``--bundles`` transaction Bundles of 10 new MRD Observations
each through ``adapter.api.writes.process_bundle`` (validation, conditional logic, store,
subscription outbox, course refresh), on SQLite and (with --postgres) a throwaway PostgreSQL
database, in four ways, all in the same run:

1. the schema on the pure-Python reference engine, as every API write did before issue 7's work;
2. jsonschema-rs for the schema (the R4B model still checks every resource in full): an unbound
   principal (development mode);
3. as a client bound to site ``hito``, with the per-reference site check switched off: the write
   path as it was before issue 17's write confinement;
4. the same with the check (adapter/api/writes.py ``check_site_references``: every reference of
   every entry resolved to its site, once per transaction). A line gives its cost;
5. case 2 without the R4 core invariants (fhirpathpy, adapter/validation/invariants.py): the last
   line gives what checking them costs.
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
from adapter.auth.policy import Principal  # noqa: E402
from adapter.config import Settings, get_settings  # noqa: E402
from adapter.ingest import ingest_file  # noqa: E402
from adapter.store import Store  # noqa: E402
from adapter.validation import Validator, get_validator  # noqa: E402


class _Reference:
    """The validator as API writes used it before: the schema on the pure-Python engine."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def validate(self, resource: dict[str, Any], full: bool = False, reference: bool | None = None) -> Any:
        return self.inner.validate(resource, full=True, reference=True)

    def with_profile(self, resource: dict[str, Any]) -> dict[str, Any]:
        return self.inner.with_profile(resource)


def _bundle(template: dict[str, Any]) -> dict[str, Any]:
    entries = []
    for _ in range(10):
        o = copy.deepcopy(template)
        o.pop("id")
        o["meta"] = {"profile": template["meta"]["profile"]}
        o["identifier"] = [{"system": "urn:bench", "value": str(uuid.uuid4())}]
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": o, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _one(store: Store, validator: Any, template: dict[str, Any], with_check: bool, **kw: Any) -> float:
    """Seconds for one 10-entry transaction (``with_check``: the per-reference site check on)."""
    check = writes.check_site_references
    writes.check_site_references = check if with_check else (lambda tx: None)
    try:
        t = time.perf_counter()
        out = writes.process_bundle(store, validator, _bundle(template), "http://bench", **kw)
        elapsed = time.perf_counter() - t
    finally:
        writes.check_site_references = check
    assert all(e["response"]["status"] == "201 Created" for e in out["entry"])
    return elapsed


def run(url: str, n: int) -> None:
    store = Store(url)
    store.migrate()
    settings = Settings(database_url=url, export_dir=Path(tempfile.mkdtemp()))
    for path, mapping in (("hito_seguimiento_blinatumomab.xlsx", "seguimiento"), ("hito_erm_citometria.csv", "erm_citometria")):
        ingest_file(ROOT / "examples/hito" / path, "hito", mapping, store, settings=settings)
    observations = list(store.iter_resources("Observation", site="hito"))
    fast = get_validator()
    site = Principal("bench-site-client", "site", "hito", ("system/*.cruds",))
    cases = (("baseline (reference schema engine)", _Reference(fast), {}, True),
             ("jsonschema-rs schema, full model", fast, {}, True),
             ("site client, no reference check", fast, {"site": "hito", "principal": site}, False),
             ("site client, reference check", fast, {"site": "hito", "principal": site}, True),
             ("jsonschema-rs, no core invariants", Validator(get_settings().fhir_schema_path, get_settings().profiles_dir,
                                                             core_invariants=False), {}, True))
    times: dict[str, list[float]] = {name: [] for name, *_ in cases}
    for _name, validator, kw, with_check in cases:  # warm-up
        _one(store, validator, observations[0], with_check, **kw)
    for k in range(n):  # the cases take turns, on the same result's patient: none runs on a bigger store
        template = observations[k % len(observations)]
        for name, validator, kw, with_check in cases:
            times[name].append(_one(store, validator, template, with_check, **kw))
    for name, t in times.items():
        print(f"{store.engine.dialect.name:10} {name:36} median {statistics.median(t) * 1000:7.1f} ms"  # noqa: T201
              f"  max {max(t) * 1000:7.1f} ms per 10-entry transaction")
    before = statistics.median(times["site client, no reference check"])
    after = statistics.median(times["site client, reference check"])
    print(f"{store.engine.dialect.name:10} per-reference site check: {100 * (after - before) / before:+.1f} % "  # noqa: T201
          "of the 10-entry transaction (median)")
    off = statistics.median(times["jsonschema-rs, no core invariants"])
    on = statistics.median(times["jsonschema-rs schema, full model"])
    print(f"{store.engine.dialect.name:10} R4 core invariants (fhirpathpy): {100 * (on - off) / off:+.1f} % "  # noqa: T201
          f"of the 10-entry transaction (median, {(on - off) * 100:.2f} ms per resource)")
    store.engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundles", type=int, default=100)
    ap.add_argument("--postgres", help="a PostgreSQL server URL (a throwaway database is made on it)")
    args = ap.parse_args()
    for url in database_urls(args.postgres):
        run(url, args.bundles)


if __name__ == "__main__":
    main()
