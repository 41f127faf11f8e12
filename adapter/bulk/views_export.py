"""Running SQL on FHIR ``$viewdefinition-export`` jobs: one file per view, written in the background.

The job shares the Bulk Data ``export_jobs`` table and worker (adapter/bulk/runner.py): it is
claimed, heart-beaten, cut off and rerun, cancelled and expired the same way; its ``params`` hold
``kind: "viewdefinition-export"`` and everything the kick-off resolved under the caller's
authority (the site the caller may read, whether output is de-identified, the patients of a
group or patient filter, ``_since``), so the worker needs no request. Files go to
``<export_dir>/<job id>/<name>.<ext>``, each written as ``.part`` and renamed when whole.

Each view reads the store's current resources of its type as of the job's transaction time
(adapter/store/exports.py ``stream``), de-identified when the kick-off said so, and runs compiled
to SQL on an embedded DuckDB, or on the reference runner when its FHIRPath is outside the compiled
subset (adapter/views/engines.py ``view_rows``). Output formats: adapter/views/output.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from adapter.config import Settings
from adapter.privacy import deidentify
from adapter.store import Store
from adapter.store.exports import ExportJob, ExportJobs, stream

KIND = "viewdefinition-export"
#: file name extension per ``_format``
EXTENSIONS = {"json": "json", "ndjson": "ndjson", "csv": "csv", "parquet": "parquet"}


def run_view_job(store: Store, settings: Settings, jobs: ExportJobs, job: ExportJob) -> None:
    """Run one claimed view-export job to completion, failure (its reason stored, shown by the
    result URL as an OperationOutcome) or cancellation, with the Bulk export's job lifecycle
    (adapter/bulk/runner.py ``run_lifecycle``). Never raises."""
    from adapter.bulk.runner import run_lifecycle

    run_lifecycle(settings, jobs, job, "view export",
                  lambda folder: write_view_export(store, settings, job, folder, beat=lambda text: jobs.beat(job.id, text)))


def _resources(store: Store, settings: Settings, p: dict[str, Any], rtype: str, until: str) -> Iterator[dict[str, Any]]:
    patients = p.get("patients")
    for res in stream(store, rtype, until=until, since=p.get("since"), patients=patients,
                      patient_level=patients is not None and rtype != "Patient", site=p.get("site")):
        yield deidentify(res, settings.pseudonym_key, settings.deidentify_birth_date,
                         settings.deidentify_date_shift_days) if p.get("deidentified") else res


def write_view_export(store: Store, settings: Settings, job: ExportJob, folder: Path,
                      beat: Callable[[str], bool]) -> dict[str, Any]:
    """Write every view of ``job`` to ``folder``; the manifest: ``{"format", "output": [{"name",
    "file", "count"}]}``. ``beat(progress)`` is called per view and returning False (cancelled)
    stops the job. Raises ViewDefinitionError (a view that fails on the data) or ValueError (a
    value that does not fit its Parquet column)."""
    from adapter.bulk.runner import Cancelled
    from adapter.views.engines import view_rows
    from adapter.views.output import render
    from adapter.views.runner import CompiledView

    p = job.params
    fmt, header = p["format"], p.get("header", True)
    outputs = []
    for k, spec in enumerate(p["views"]):
        if not beat(f"view {k + 1} of {len(p['views'])}"):
            raise Cancelled
        view = CompiledView(spec["view"])
        rows = view_rows(spec["view"], _resources(store, settings, p, str(view.resource), job.transaction_time))
        data = render(rows, view.columns, fmt, header)
        name = f"{spec['name']}.{EXTENSIONS[fmt]}"
        part = folder / (name + ".part")
        part.write_bytes(data)
        part.replace(folder / name)
        outputs.append({"name": spec["name"], "file": name, "count": len(rows)})
    return {"format": fmt, "output": outputs}
