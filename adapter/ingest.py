"""Ingestion: one site export file -> validated FHIR R4 resources in the store, with a report.

readers -> mapping engine (pure) -> validation -> store, in one database transaction per file:
- every row is accounted for: rows read = rows mapped + rows rejected;
- a rejected row yields OperationOutcome issues naming file, sheet, row, column, value and reason;
- valid rows are stored; ``strict`` stores nothing when any row is rejected; ``dry_run`` stores nothing;
- re-posting the same file changes nothing; a corrected file versions exactly the changed resources;
- each ingestion that changed something writes a Provenance (agent: the site; entity: the file by
  SHA-256; each target carries its source row);
- records are linked across a site's files by the site's own patient identifier (the Patient id is
  derived from site + identifier, so a lab feed and a clinical sheet meet in one Patient). A record
  whose patient no file of the site has brought (yet) is stored and reported as a warning, once per
  patient, with the first row and the identifier's column; links are never made across sites.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from adapter.config import Settings, get_settings
from adapter.errors import IngestRejected, RowIssue
from adapter.mapping import fhir
from adapter.mapping.base import SiteContext
from adapter.mapping.engine import map_row
from adapter.mapping.fhir import DECEASED, Contribution, merge_deceased
from adapter.mapping.patient import organization
from adapter.mapping.study import NETWORK, patient_group, research_study, research_subject, site_group_id, study_group_id
from adapter.readers import reader_for
from adapter.spec import load_mapping
from adapter.spec.loader import LoadedMapping
from adapter.store import Rollback, Store, WriteOutcome
from adapter.store.db import CORRECTED, content_hash, now_instant
from adapter.validation import Validator, get_validator


@dataclass
class IngestReport:
    """The outcome of one ingestion. Counts are of source rows and of resources per outcome."""

    ingestion_id: str
    site: str
    mapping: str
    file: str
    sha256: str
    started: str
    strict: bool = False
    dry_run: bool = False
    rows_read: int = 0
    rows_mapped: int = 0
    rows_rejected: int = 0
    rows_skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows the mapping skips
    blank_rows: int = 0
    stored: bool = False
    outcomes: list[WriteOutcome] = field(default_factory=list)
    issues: list[RowIssue] = field(default_factory=list)
    provenance_ids: list[str] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)  # the first ``show`` resources mapped
    unlinked_patients: int = 0  # patients referenced by this file with no Patient at the site
    #: resources changed through the REST API since the last ingestion, whose version this file
    #: kept (its row is unchanged since) or replaced (its row changed too); see Transaction.upsert
    api_versions_kept: list[str] = field(default_factory=list)
    api_versions_replaced: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        """``{resourceType: {created|updated|unchanged: n}}``."""
        out: dict[str, Counter[str]] = {}
        for o in self.outcomes:
            out.setdefault(o.type, Counter())[o.outcome] += 1
        return {t: dict(c) for t, c in sorted(out.items())}

    def operation_outcome(self) -> dict[str, Any]:
        """Row issues as an OperationOutcome (FHIR R4 §OperationOutcome); ``information`` if none."""
        issues = [i.to_operation_outcome_issue() for i in self.issues] or [
            {"severity": "information", "code": "informational",
             "diagnostics": f"{self.rows_read} row(s) read, {self.rows_mapped} mapped, 0 rejected"}]
        return {"resourceType": "OperationOutcome", "issue": issues}

    def to_json(self) -> dict[str, Any]:
        return {"ingestion": self.ingestion_id, "site": self.site, "mapping": self.mapping, "file": self.file,
                "sha256": self.sha256, "started": self.started, "strict": self.strict, "dryRun": self.dry_run,
                "rowsRead": self.rows_read, "rowsMapped": self.rows_mapped, "rowsRejected": self.rows_rejected,
                "rowsSkipped": sum(self.rows_skipped.values()), "skipped": self.rows_skipped,
                "blankRows": self.blank_rows, "unlinkedPatients": self.unlinked_patients, "stored": self.stored, "resources": self.counts(),
                "apiVersionsKept": self.api_versions_kept, "apiVersionsReplaced": self.api_versions_replaced,
                "provenance": self.provenance_ids, "operationOutcome": self.operation_outcome(),
                "rowIssues": [{"file": i.file, "sheet": i.sheet, "row": i.row, "segment": i.segment, "column": i.column,
                               "value": None if i.value is None else str(i.value), "reason": i.reason, "code": i.code,
                               "severity": i.severity} for i in self.issues]}


#: Targets per Provenance resource. A large file's ingestion is recorded by several Provenance
#: resources with the same agent, entity and time, so that none grows with the file.
PROVENANCE_TARGETS = 1000


def provenance_for(site: SiteContext, file_name: str, sha256: str,
                   targets: list[tuple[str, str, int, str]], recorded: str, part: int = 0) -> dict[str, Any]:
    """Provenance of one ingestion, or of part ``part`` of it (FHIR R4 §6.3 Provenance). ``targets``
    are (type, id, version, source row locator); references are versioned (``Type/id/_history/n``)."""
    prov = fhir.profiled("Provenance", site.id("provenance", sha256, recorded, part), "pedall-provenance")
    prov["target"] = [{
        "reference": f"{t}/{i}/_history/{v}",
        "extension": [{"url": fhir.SD + "source-row", "valueString": loc}],
    } for t, i, v, loc in targets]
    prov["recorded"] = recorded
    prov["activity"] = fhir.concept(fhir.coding("http://terminology.hl7.org/CodeSystem/v3-DataOperation", "UPDATE", "revise"))
    prov["agent"] = [{
        "type": fhir.concept(fhir.coding("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "author", "Author")),
        "who": fhir.ref("Organization", site.site),
    }]
    prov["entity"] = [{"role": "source", "what": {
        "identifier": {"system": fhir.SID + "sha256", "value": sha256}, "display": file_name}}]
    return prov


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _locator(file: str, sheet: str | None, row: int, segment: str | None = None) -> str:
    if segment:
        return f"{file}!message {row}!{segment}"
    return f"{file}!{sheet}!{row}" if sheet else f"{file}!{row}"


#: Allocations of container objects between two young-generation collections of the cyclic
#: garbage collector while an ingestion runs (CPython's default is 700; see :func:`fewer_gc_collections`).
INGEST_GC_THRESHOLD = 500_000
_gc_lock = threading.Lock()
_gc_state: dict[str, Any] = {"active": 0, "saved": None}


@contextmanager
def fewer_gc_collections(threshold: int = INGEST_GC_THRESHOLD) -> Iterator[None]:
    """Run the block with CPython's cyclic garbage collector triggered every ``threshold``
    allocations instead of every 700 (``gc.set_threshold``; Python docs, "gc — Garbage Collector
    interface"). An ingestion allocates a few dozen dicts and lists per row and keeps tens of
    thousands of them alive (its report, the file's ids), so with the default threshold the
    collector runs thousands of times and walks them again and again: ~17 % of an ingestion's time
    at 20,000 rows (``make bench``). At 50,000 it still took ~1 s of a 50,000-row ingestion's 21 s
    (each run walked the young objects that had not been freed yet); at 500,000, 0.1 s, with the
    same peak memory (314 MB). Nothing is collected less: reference counting still frees every
    object that is not in a cycle at once, and cycles are collected at the next run.

    The threshold is process-wide: the first of concurrent ingestions (threads) raises it and the
    last one to finish restores what it was, so overlapping ingestions never leave it raised. A
    threshold lower than the current one is not applied. Raises nothing of its own."""
    with _gc_lock:
        if _gc_state["active"] == 0:
            _gc_state["saved"] = gc.get_threshold()
            if threshold > _gc_state["saved"][0]:
                gc.set_threshold(threshold, *_gc_state["saved"][1:])
        _gc_state["active"] += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_state["active"] -= 1
            if _gc_state["active"] == 0:
                gc.set_threshold(*_gc_state["saved"])


def ingest_file(path: Path, site: str, mapping: str, store: Store, *, strict: bool = False, dry_run: bool = False,
                settings: Settings | None = None, validator: Validator | None = None,
                display_name: str | None = None, full_validation: bool = False,
                progress: Callable[[int], None] | None = None, show: int = 0, data: bytes | None = None,
                loaded: LoadedMapping | None = None) -> IngestReport:
    """Ingest one file with the site's named mapping. ``show`` keeps the first N mapped resources
    (from rows without issues) in ``report.sample``, for ``adapter ingest --dry-run --show N``.
    ``data``: the file's content, already in memory (an HL7 v2 message received over MLLP;
    ``path`` then only names it): read instead of ``path`` by the ``hl7v2`` reader. ``loaded``: the
    mapping, already loaded by the caller (the MLLP listener loads it once at start).

    Raises:
        ConfigError / MappingSpecError: unknown site or mapping, invalid mapping file.
        ReaderError: the file cannot be read at all (nothing is stored).
        IngestRejected: ``strict`` and at least one row was rejected (nothing is stored; the report
            is on the exception's ``report`` attribute).
        StoreError: the database refused the write (nothing is stored).
    """
    settings = settings or get_settings()
    validator = validator or get_validator()
    loaded = loaded or load_mapping(site, mapping, settings.mappings_dir)
    sc = loaded.site_context(settings.id_key)
    path = Path(path)
    name = display_name or path.name
    digest = hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path) if path.is_file() else ""
    ingestion_id = str(uuid.uuid4())
    reader = reader_for(loaded.spec.reader.format)(path, loaded.spec.reader, display_name=name, data=data)
    made: list[IngestReport] = []

    def attempt(tx: Any) -> IngestReport:
        """The whole ingestion in ``tx``; run again from the start when the store retries it."""
        # one ingestion of a site at a time (PostgreSQL advisory lock; SQLite's single writer): a
        # file posted twice at once is stored once, and a later post waits or gets 503 + Retry-After
        tx.lock_within(f"ingest:{site}", settings.ingest_lock_wait_seconds, f"another ingestion for site {site}")
        report = IngestReport(ingestion_id, site, mapping, name, digest, now_instant(), strict=strict, dry_run=dry_run)
        made.append(report)
        _ingest_into(tx, report, reader, loaded, sc, settings, validator, full_validation, progress, show)
        if dry_run or (strict and report.rows_rejected):
            raise Rollback
        report.stored = True
        tx.record_ingestion({"id": report.ingestion_id, "site": site, "mapping": mapping, "file_name": name[:255],
                             "sha256": report.sha256, "started": report.started, "rows_read": report.rows_read,
                             "rows_mapped": report.rows_mapped, "rows_rejected": report.rows_rejected,
                             "report": orjson.dumps(report.to_json()).decode()})
        return report

    with fewer_gc_collections():
        store.run(attempt)
    report = made[-1]
    if strict and report.rows_rejected:
        err = IngestRejected(f"{report.rows_rejected} of {report.rows_read} row(s) rejected; --strict stored nothing")
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _ingest_into(tx: Any, report: IngestReport, reader: Any, loaded: Any, sc: SiteContext, settings: Settings,
                 validator: Validator, full_validation: bool, progress: Callable[[int], None] | None, show: int) -> None:
    """Read, map, validate and store every row of one file in ``tx``, filling ``report`` (see
    :func:`ingest_file`)."""
    site, name = report.site, report.file
    # (type, id) -> (SHA-256 of the canonical JSON, source row locator), for every resource of this file
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    batch: list[tuple[dict[str, Any], str, str]] = []
    # Patient id -> the first row that refers to it (for the link check)
    referenced: dict[str, tuple[Any, str | None]] = {}

    # Patients of this file (written once, at the end) and the deaths its rows state (Contributions)
    patients: dict[tuple[str, str], dict[str, Any]] = {}
    deaths: dict[tuple[str, str], dict[str, Any]] = {}
    death_rows: dict[tuple[str, str], tuple[Any, str | None]] = {}

    def flush() -> None:
        report.outcomes.extend(tx.upsert(batch, keep_corrections=True, ingested=True))
        batch.clear()

    org = organization(sc)
    seen[("Organization", site)] = (content_hash(org), f"{name}!site")
    batch.append((org, site, seen[("Organization", site)][0]))
    for sheet in loaded.sheets:
        for row in reader.rows(sheet.sheet, set(sheet.columns)):
            report.rows_read += 1
            result = map_row(row, sheet, loaded.ctx, sc)
            loc = _locator(row.file, row.sheet, row.row, row.segment)
            if result.ok:
                for res in result.resources:
                    for vi in validator.validate(res, full=full_validation):
                        result.issues.append(RowIssue(row.file, row.sheet, row.row, None, None,
                                                      f"{res['resourceType']} fails validation: {vi.message}",
                                                      code="invariant", expression=[vi.expression],
                                                      segment=row.segment))
                fresh = []
                row_deaths: list[tuple[tuple[str, str], dict[str, Any]]] = []
                for res in result.resources:
                    key = (res["resourceType"], res["id"])
                    if isinstance(res, Contribution):  # a death stated by this row: merged into the Patient below
                        _, conflict = merge_deceased(deaths.get(key, {}), res)
                        if conflict:
                            result.issues.append(RowIssue(row.file, row.sheet, row.row, None, None,
                                                          f"Patient: {conflict} (another row of this file gives the other)",
                                                          code="duplicate", segment=row.segment))
                        row_deaths.append((key, res))
                        continue
                    digest = content_hash(res)
                    if key in seen and seen[key][0] != digest and res.get("status") in CORRECTED:
                        # a later message corrects a result of the same file (HL7 v2 OBX-11 "C"):
                        # store the original first, so that the correction is its next version
                        flush()
                        del seen[key]
                    if key in seen:
                        if seen[key][0] != digest:
                            result.issues.append(RowIssue(
                                row.file, row.sheet, row.row, None, None,
                                f"{key[0]} conflicts with the one from {seen[key][1]} (same source keys, "
                                "different content)", code="duplicate", segment=row.segment))
                        continue
                    fresh.append((key, digest, res))
                if not result.issues:
                    for key, digest, res in fresh:
                        pid = _patient_of(res)
                        if pid is not None and pid not in referenced:
                            referenced[pid] = (row, sheet.patient_column)
                        seen[key] = (digest, loc)
                        if key[0] == "Patient":  # written once, at the end, with every death of the file merged in
                            patients[key] = res
                        else:
                            batch.append((res, site, digest))
                        if len(report.sample) < show:
                            report.sample.append(res)
                    for key, res in row_deaths:
                        deaths[key] = merge_deceased(deaths[key], res)[0] if key in deaths else res
                        death_rows.setdefault(key, (row, sheet.patient_column))
            if result.skipped is not None:
                report.rows_skipped[result.skipped] = report.rows_skipped.get(result.skipped, 0) + 1
            elif result.issues:
                report.rows_rejected += 1
                report.issues.extend(result.issues)
            else:
                report.rows_mapped += 1
                report.issues.extend(result.warnings)  # e.g. an identifier read in its canonical Unicode form
            if len(batch) >= settings.batch_size:
                flush()
            if progress:
                progress(report.rows_read)
    flush()
    for merged in _settle_patients(tx, patients, deaths, site):
        key = ("Patient", merged["id"])
        if key not in seen:  # a Patient only a death row named: located at that row
            row, column = death_rows[key]
            seen[key] = ("", _locator(row.file, row.sheet, row.row, row.segment))
        batch.append((merged, site, content_hash(merged)))
    flush()
    report.outcomes.extend(_study_membership(tx, sc, settings, validator, [i for t, i in seen if t == "Patient"]))
    report.blank_rows = reader.stats.blank
    unlinked = tx.missing("Patient", [p for p in referenced if ("Patient", p) not in seen])
    report.unlinked_patients = len(unlinked)
    for pid in sorted(unlinked, key=lambda p: referenced[p][0].row):
        row, column = referenced[pid]
        report.issues.append(RowIssue(
            row.file, row.sheet, row.row, column, row.cells.get(column) if column else None,
            f"no Patient with this identifier at site {site} yet: the record is stored and links when "
            "another export of the site brings the patient", severity="warning", code="not-found", segment=row.segment))
    for o in report.outcomes:  # the REST API's changes since the last ingestion: kept, or replaced
        if o.note:
            where = seen[(o.type, o.id)][1] if (o.type, o.id) in seen else name
            kept = o.note == "kept-api-version"
            (report.api_versions_kept if kept else report.api_versions_replaced).append(f"{o.type}/{o.id}")
            report.issues.append(RowIssue(
                name, None, None, None, None,
                f"{o.type}/{o.id} (from {where}) " + (
                    "was changed through the REST API since the last ingestion; this file's row is unchanged "
                    f"since then, so the API's version {o.version_id} is kept" if kept else
                    "was changed through the REST API since the last ingestion, and this file changes it too: "
                    f"the file's content replaces the API's version (now version {o.version_id})"),
                severity="warning", code="conflict"))
    changed = [(o.type, o.id, o.version_id, seen[(o.type, o.id)][1] if (o.type, o.id) in seen else name)
               for o in report.outcomes if o.outcome != "unchanged"]
    for part, start in enumerate(range(0, len(changed), PROVENANCE_TARGETS)):
        prov = provenance_for(sc, name, report.sha256, changed[start:start + PROVENANCE_TARGETS],
                              report.started, part)
        for vi in validator.validate(prov):
            raise AssertionError(f"Provenance fails validation: {vi}")  # a bug, not bad input
        tx.upsert([(prov, site, content_hash(prov))])
        report.provenance_ids.append(prov["id"])


def _settle_patients(tx: Any, patients: dict[tuple[str, str], dict[str, Any]],
                     deaths: dict[tuple[str, str], dict[str, Any]], site: str) -> list[dict[str, Any]]:
    """The Patients a file writes, each with every death its rows state merged in (FHIR R4 §8.1
    ``deceased[x]``; rules in :func:`adapter.mapping.fhir.merge_deceased`), and with the death the
    store already holds when this file says nothing about one: a demographic export posted again
    never erases a death another export of the site recorded (only a stated ``deceasedBoolean:
    false`` or a correction through the API does). A Patient that only a death names is the stored
    one with the death added, or, when none is stored yet, its identity with the death."""
    keys = sorted(set(patients) | set(deaths))
    if not keys:
        return []
    stored = tx.current_resources("Patient", [k[1] for k in keys], site)
    out = []
    for key in keys:
        base = patients.get(key)
        before = stored.get(key[1])
        if base is None:
            base = dict(before) if before is not None else dict(deaths[key])
            base["meta"] = {k: v for k, v in base.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}
        if key in deaths:
            base = merge_deceased(dict(base), deaths[key])[0]
        if before is not None and not any(k in base for k in DECEASED) and any(k in before for k in DECEASED):
            base = merge_deceased(dict(base), before)[0]  # a death recorded by another export stays
        out.append(base)
    return out


def _study_membership(tx: Any, sc: SiteContext, settings: Settings, validator: Validator,
                      patients: list[str]) -> list[WriteOutcome]:
    """Enrol the Patients this file wrote in the study (a ResearchSubject each) and bring the
    site's Group and the study cohort's Group up to date (adapter/mapping/study.py), in the
    ingestion's transaction. Nothing is written when the file wrote no Patient."""
    if not patients:
        return []
    sid = settings.study_id
    mine = [research_study(sid, settings.study_title), *(research_subject(sc, p, sid) for p in sorted(patients)),
            patient_group(site_group_id(sc.site), f"Patients of {sc.name}", tx.patient_ids(sc.site), sc.site)]
    network = [patient_group(study_group_id(sid), f"{settings.study_title}: study cohort", tx.patient_ids())]
    for res in [*mine, *network]:
        for vi in validator.validate(res):
            raise AssertionError(f"{res['resourceType']} fails validation: {vi}")  # a bug, not bad input
    site_of = {"ResearchStudy": NETWORK}
    return tx.upsert([(r, site_of.get(r["resourceType"], sc.site), None) for r in mine]
                     + [(r, NETWORK, None) for r in network], ingested=True)


def _patient_of(resource: dict[str, Any]) -> str | None:
    ref = (resource.get("subject") or resource.get("patient") or resource.get("individual") or {}).get("reference", "")
    return ref.split("/", 1)[1] if resource.get("resourceType") != "Patient" and ref.startswith("Patient/") else None
