"""The ``adapter`` command line (typer + rich).

Exit codes (also in README.md; ``adapter.errors`` draws the hierarchy):

    0  success                       4  --strict and rows were rejected (nothing stored)
    1  unexpected adapter error      5  a resource or file failed validation
    2  configuration / mapping file  6  database error (nothing stored)
    3  the input file is unreadable  64 command-line usage error
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from adapter.config import ROOT, get_settings
from adapter.errors import AdapterError, ConfigError, IngestRejected, ReaderError, ValidationFailed

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="FHIR R4 adapter for multicenter pediatric leukemia outcome studies.")
console = Console()
err_console = Console(stderr=True)


def _store() -> Any:
    from adapter.store import Store

    store = Store(get_settings().database_url, busy_seconds=get_settings().sqlite_busy_seconds)
    store.migrate()
    return store


@contextmanager
def _audited(store: Any, what: str) -> Iterator[None]:
    """Record the command in the audit trail (adapter/auth/audit.py) when it ends: agent
    ``cli:<OS user>``, ``what`` as the path (site, mapping, ids: never file names, which may hold a
    patient's name), status 200, or 422/500 when it failed."""
    import getpass

    from adapter.auth.audit import audit_event
    from adapter.store.db import now_instant
    from adapter.store.security import AuditTrail

    status = 500
    try:
        yield
        status = 200
    except (IngestRejected, ReaderError):
        status = 422
        raise
    except ConfigError:
        status = 400
        raise
    except typer.Exit as e:
        status = 200 if not e.exit_code else 422
        raise
    finally:
        who = f"cli:{getpass.getuser()}"
        ev = audit_event(recorded=now_instant(), method="CLI", path=what, status=status, client_id=who, role="operator",
                         site=None, address="localhost")
        from adapter.store.audit_spool import AuditSpool

        spool = AuditSpool(AuditTrail(store), get_settings().audit_spool_dir, quick_seconds=get_settings().sqlite_busy_seconds)
        try:
            if not spool.record(ev, client_id=who, role="operator", site=None, status=status, method="CLI",
                                path=what, entity=None):
                err_console.print("[yellow]warning[/]: the database was busy; the audit event is spooled and the "
                                  "service writes it")
        except OSError:
            err_console.print("[yellow]warning[/]: the audit event could not be written or spooled")


def _fail(exc: AdapterError) -> None:
    err_console.print(f"[bold red]error[/] ({exc.__class__.__name__}, exit {exc.exit_code}): {exc}", markup=True,
                      highlight=False)
    raise typer.Exit(exc.exit_code)


@app.command("init-db")
def init_db() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    try:
        store = _store()
    except AdapterError as exc:
        _fail(exc)
    console.print(f"database ready at revision {store.schema_revision()}")


def _print_report(report: Any) -> None:
    t = Table(title=f"{report.site}/{report.mapping}: {report.file}", show_lines=False)
    t.add_column("resource")
    for col in ("created", "updated", "unchanged"):
        t.add_column(col, justify="right")
    for rtype, c in report.counts().items():
        t.add_row(rtype, *(str(c.get(k, 0)) for k in ("created", "updated", "unchanged")))
    console.print(t)
    state = "stored" if report.stored else ("dry run, nothing stored" if report.dry_run else "nothing stored")
    skipped = sum(report.rows_skipped.values())
    console.print(f"rows read {report.rows_read} = mapped {report.rows_mapped} + rejected {report.rows_rejected}"
                  + (f" + skipped by the mapping {skipped}" if skipped else "")
                  + f" (blank rows skipped: {report.blank_rows}); {state}", highlight=False)
    for reason, n in report.rows_skipped.items():
        console.print(f"  skipped {n}: {reason}", highlight=False)
    if report.unlinked_patients:
        console.print(f"{report.unlinked_patients} patient(s) not linked to a Patient of the site (warnings below)")
    for issue in report.issues:
        d = issue.to_operation_outcome_issue()
        color = "red" if d["severity"] == "error" else "yellow"
        console.print(f"  [{color}]{d['severity']}[/] {d['diagnostics']}", highlight=False)


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="the export file (CSV, XLSX or HL7 v2)")],
    site: Annotated[str, typer.Option(help="site code, a folder under mappings/")],
    mapping: Annotated[str, typer.Option(help="mapping name: mappings/<site>/<name>.yaml")],
    strict: Annotated[bool, typer.Option(help="reject the whole file if any row is rejected")] = False,
    dry_run: Annotated[bool, typer.Option(help="map and validate, store nothing")] = False,
    full_validation: Annotated[bool, typer.Option(help="run all three validators on every resource")] = False,
    report_json: Annotated[Path | None, typer.Option(help="also write the report as JSON here")] = None,
    show: Annotated[int, typer.Option(help="print the first N mapped resources (FHIR JSON)", min=0)] = 0,
) -> None:
    """Map an export to FHIR R4, validate it and store it (idempotent). With --dry-run --show N, try a
    mapping file: the first N resources and every row issue are printed, nothing is stored."""
    from adapter.ingest import ingest_file

    try:
        store = _store()
        with _audited(store, f"adapter ingest --site {site[:40]} --mapping {mapping[:64]}" + (" --dry-run" if dry_run else "")), \
                Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
            task = bar.add_task(f"ingest {file.name}", total=None)
            report = ingest_file(file, site, mapping, store, strict=strict, dry_run=dry_run,
                                 full_validation=full_validation, show=show,
                                 progress=lambda n: bar.update(task, completed=n))
    except IngestRejected as exc:
        _print_report(exc.report)  # type: ignore[attr-defined]
        _fail(exc)
    except AdapterError as exc:
        _fail(exc)
    for res in report.sample:
        sys.stdout.write(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
    _print_report(report)
    if report_json:
        report_json.write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False), encoding="utf-8")


@app.command("export-bundle")
def export_bundle(
    out: Annotated[Path, typer.Option("-o", "--out", help="output file (a FHIR collection Bundle, JSON)")],
    site: Annotated[str | None, typer.Option(help="only this site; every site when left out")] = None,
) -> None:
    """Write the stored resources as a FHIR collection Bundle (streamed to the file)."""
    import orjson

    try:
        store = _store()
        n = 0
        total = sum(store.counts(site).values())
        with out.open("wb") as fh, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                             TimeElapsedColumn(), console=err_console, transient=True) as bar:
            task = bar.add_task(f"writing {out.name}", total=total)
            fh.write(b'{"resourceType":"Bundle","type":"collection","timestamp":')
            from adapter.store.db import now_instant

            fh.write(orjson.dumps(now_instant()) + b',"entry":[')
            for res in store.iter_resources(site=site):
                if n:
                    fh.write(b",")
                fh.write(orjson.dumps({"fullUrl": f"{res['resourceType']}/{res['id']}", "resource": res}))
                n += 1
                bar.advance(task)
            fh.write(b"]}")
    except AdapterError as exc:
        _fail(exc)
    console.print(f"wrote {n} resource(s) to {out}")


@app.command("export")
def export_ndjson(
    out: Annotated[Path, typer.Option("--out", help="folder for the NDJSON files and manifest.json (created)")],
    group: Annotated[str | None, typer.Option(help="a Group id, e.g. site-hito or study-pedall-blinatumomab")] = None,
    patients: Annotated[bool, typer.Option("--patients", help="every Patient compartment (like /Patient/$export)")] = False,
    type_: Annotated[list[str] | None, typer.Option("--type", help="resource type(s) to export (repeat); default all")] = None,
    since: Annotated[str | None, typer.Option(help="only resources changed after this FHIR instant")] = None,
    type_filter: Annotated[list[str] | None, typer.Option(help="Type?search, as Bulk Data _typeFilter (repeat)")] = None,
    deidentify: Annotated[bool, typer.Option(help="pseudonyms, birth dates cut, no free text (needs ADAPTER_PSEUDONYM_KEY)")] = False,
) -> None:
    """Write a Bulk Data export (NDJSON per type + manifest.json) to a folder, with a progress bar:
    the same files as GET /Group/{id}/$export, /Patient/$export or /$export."""
    from adapter.bulk.request import ExportRequestError, parse_kickoff
    from adapter.bulk.runner import count_export, write_export
    from adapter.store.db import now_instant

    settings = get_settings()
    if group and patients:
        _fail(ConfigError("give --group or --patients, not both"))
    level = "group" if group else "patient" if patients else "system"
    items = [("_type", t) for t in type_ or []] + [("_typeFilter", f) for f in type_filter or []]
    items += [("_since", since)] if since else []
    items += [("_deidentify", "true")] if deidentify else []
    try:
        req = parse_kickoff(level, items, group_id=group, force_deidentify=settings.export_deidentify)
    except ExportRequestError as exc:
        _fail(ConfigError(str(exc)))
    if req.deidentify and not settings.pseudonym_key:
        from adapter.privacy import PseudonymKeyMissing

        _fail(PseudonymKeyMissing("de-identified exports need ADAPTER_PSEUDONYM_KEY"))
    path = {"group": f"Group/{group}/$export", "patient": "Patient/$export", "system": "$export"}[level]
    from urllib.parse import urlencode

    request_url = f"{(settings.base_url or 'urn:adapter-cli:').rstrip('/')}/{path}" + (f"?{urlencode(items)}" if items else "")
    try:
        store = _store()
        if group and store.read("Group", group) is None:
            _fail(ConfigError(f"Group/{group} is not known"))
        when = now_instant()
        total = count_export(store, req, when)
        if out.exists() and any(out.iterdir()):
            _fail(ConfigError(f"{out} is not empty; give a new folder"))
        out.mkdir(parents=True, exist_ok=True)
        with _audited(store, f"adapter export {path}" + (" _deidentify=true" if req.deidentify else "")), \
                Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                         console=err_console, transient=True) as bar:
            task = bar.add_task("exporting", total=total)

            def beat(progress: str, force: bool) -> bool:
                if not force:
                    bar.advance(task)
                return True

            manifest = write_export(store, settings, req, out, transaction_time=when, request_url=request_url,
                                    url_for=lambda name: (out / name).resolve().as_uri(), beat=beat)
    except AdapterError as exc:
        _fail(exc)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    n = sum(o["count"] for o in manifest["output"])
    console.print(f"wrote {n} resource(s) in {len(manifest['output'])} file(s) and manifest.json to {out}")


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="a FHIR resource or Bundle (JSON), or NDJSON")]) -> None:
    """Validate resources with all three validators (R4 schema, R4B models, our profiles)."""
    from adapter.validation import get_validator

    try:
        text = file.read_text(encoding="utf-8")
        docs = ([json.loads(line) for line in text.splitlines() if line.strip()]
                if file.suffix == ".ndjson" else [json.loads(text)])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        from adapter.errors import ReaderError

        _fail(ReaderError(f"{file.name}: not readable JSON ({exc.__class__.__name__})"))
    resources = []
    for d in docs:
        if d.get("resourceType") == "Bundle":
            resources += [e["resource"] for e in d.get("entry", []) if "resource" in e]
        else:
            resources.append(d)
    validator = get_validator()
    bad = 0
    for r in resources:
        issues = validator.validate(r, full=True)
        if issues:
            bad += 1
            for i in issues:
                console.print(f"[red]{r.get('resourceType')}/{r.get('id')}[/] {i.expression}: [{i.validator}] {i.message}",
                              highlight=False)
    console.print(f"{len(resources)} resource(s), {len(resources) - bad} valid, {bad} invalid")
    if bad:
        _fail(ValidationFailed(f"{bad} resource(s) failed validation"))


@app.command()
def summary() -> None:
    """Print what the store holds, per site and resource type (counts only, no patient data)."""
    try:
        store = _store()
    except AdapterError as exc:
        _fail(exc)
    t = Table(title="stored resources")
    t.add_column("site")
    types = sorted(store.counts())
    for ty in types:
        t.add_column(ty, justify="right")
    for site in store.sites():
        c = store.counts(site)
        t.add_row(site, *(str(c.get(ty, 0)) for ty in types))
    console.print(t)
    for rep in reversed(store.ingestion_reports(newest=10)):
        console.print(f"{rep['started'][:19]} {rep['site']}/{rep['mapping']} {rep['file']}: read {rep['rowsRead']}, "
                      f"mapped {rep['rowsMapped']}, rejected {rep['rowsRejected']}", highlight=False)


@app.command()
def schema(out: Annotated[Path, typer.Option(help="folder for the JSON Schemas")] = Path("mappings/schema")) -> None:
    """Write the JSON Schemas of mapping files, site files and code tables (from the pydantic models)."""
    from adapter.spec.json_schema import write_schemas

    for p in write_schemas(out):
        console.print(f"wrote {p}")


@app.command()
def outcomes(
    site: Annotated[str | None, typer.Option(help="one site; every site and the pooled network when left out")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv")] = "table",
    stratify: Annotated[str | None, typer.Option(help="survival strata: site, hsct, status or sex")] = None,
    timepoint: Annotated[float, typer.Option(help="months at which KM estimates are read")] = 36.0,
) -> None:
    """Outcome figures (remission, MRD negativity, HSCT, toxicity, deaths, KM OS/RFS) per site and pooled."""
    from adapter.outcomes import STRATA, outcomes_report
    from adapter.outcomes.render import to_csv
    from adapter.spec.loader import load_drug_costs

    if fmt not in ("table", "json", "csv"):
        _fail(ConfigError(f"--format must be table, json or csv, not {fmt!r}"))
    if stratify is not None and stratify not in STRATA:
        _fail(ConfigError(f"--stratify must be one of {', '.join(STRATA)}, not {stratify!r}"))
    try:
        store = _store()
        if site is not None and site not in store.sites():
            raise ConfigError(f"no data for site {site!r} (sites: {', '.join(store.sites())})")
        with err_console.status("computing outcomes (Kaplan–Meier, confidence intervals)"):
            report = outcomes_report(store.cohort(site), timepoint, stratify,
                                     drug_costs=load_drug_costs(get_settings().mappings_dir))
            if fmt == "table":  # the table renders the default plan's figures (adapter/analysis/store_plan.py)
                from adapter.analysis.store_plan import for_store

                plan = for_store(store).result(timepoint, [site] if site else None)
    except AdapterError as exc:
        _fail(exc)
    if fmt == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    if fmt == "csv":
        sys.stdout.write(to_csv(report))
        return
    _print_outcomes(report, plan)


@app.command("plan")
def plan_command(
    plan: Annotated[Path, typer.Argument(help="an analysis plan (plans/*.yaml)")],
    export_dir: Annotated[Path, typer.Argument(help="a Bulk Data export folder (NDJSON files)")],
    views: Annotated[Path, typer.Option(help="folder of ViewDefinitions")] = ROOT / "views",
    html: Annotated[Path | None, typer.Option(help="also write the HTML study report (tables, Kaplan-Meier plots) here")] = None,
    suppress: Annotated[bool, typer.Option(help="small-cell suppression at the plan's min_cell_count (5 when it has "
                                                "none), for figures that leave the analyst")] = False,
) -> None:
    """Compute an analysis plan's figures from a Bulk export: the views run compiled to SQL on an
    embedded DuckDB, then the plan's variables and figures (plans/plan.schema.json) over their
    rows. Prints JSON: per site and pooled (``--html``: also the study report; ``--suppress``:
    counts under the plan's small-cell threshold withheld). Exit 2 for a plan
    that breaks its schema or whose SQL fails (named), 3 for an unreadable export."""
    from adapter.analysis.plan import load_plan, run_plan
    from adapter.views.engines import run_views_duckdb
    from adapter.views.figures import load_views

    try:
        checked = load_plan(plan)
        with err_console.status("running the views and the plan"):
            result = run_plan(checked, run_views_duckdb(load_views(views), export_dir),
                              suppress_below=checked.get("min_cell_count", 5) if suppress else None)
        if html is not None:
            from adapter.analysis.report import render_html

            html.write_text(render_html(checked, result), encoding="utf-8")
    except AdapterError as exc:
        _fail(exc)
    sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")


@app.command("verify-figures")
def verify_figures(
    export_dir: Annotated[Path, typer.Argument(help="a Bulk Data export folder (NDJSON files), e.g. from adapter export")],
    plan: Annotated[Path, typer.Option(help="the analysis plan whose figures naming `outcomes` are compared "
                                            "(default: the facade's, plans/default.yaml)")] = ROOT / "plans" / "default.yaml",
    server: Annotated[str | None, typer.Option(help="compare with this server's /outcomes (its FHIR base URL); "
                                                       "default: this machine's store")] = None,
    token: Annotated[str | None, typer.Option(help="bearer token for --server when it has auth on", envvar="ADAPTER_TOKEN")] = None,
    views: Annotated[Path, typer.Option(help="folder of ViewDefinitions")] = ROOT / "views",
    engine: Annotated[str, typer.Option(help="duckdb or spark (the views compiled to SQL), or reference (the in-memory runner)")] = "duckdb",
    spark_master: Annotated[str, typer.Option(help="Spark master URL for --engine spark", envvar="SPARK_MASTER")] = "local[2]",
    fmt: Annotated[str, typer.Option("--format", help="table or json")] = "table",
) -> None:
    """Check the facade's figures against an analysis plan run over a Bulk export. The plan
    (``--plan``; by default plans/default.yaml, every figure of /outcomes but the vial costs) runs over the
    rows of the SQL on FHIR views, compiled to SQL on an embedded DuckDB (``--engine spark``: Spark
    SQL on ``--spark-master``; ``--engine reference``: the in-memory reference runner); each of its
    figures that names ``outcomes`` is compared, per site and pooled, with ``/outcomes``. Exit 0
    when every number agrees, 8 when one differs (each is listed), 2 for a bad option, view or plan,
    3 for an unreadable export."""
    from adapter.analysis.plan import load_plan, run_plan
    from adapter.analysis.verify import comparable, compare_with_outcomes, uncompared
    from adapter.errors import FiguresDiffer
    from adapter.readers.ndjson import iter_export
    from adapter.views.engines import ENGINES, run_views_duckdb, run_views_spark
    from adapter.views.figures import load_views, run_views

    if fmt not in ("table", "json"):
        _fail(ConfigError(f"--format must be table or json, not {fmt!r}"))
    if engine not in ENGINES:
        _fail(ConfigError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}"))
    try:
        checked = load_plan(plan)
        with err_console.status(f"running the views over the export ({engine}) and the plan"):
            compiled = load_views(views)
            if engine == "duckdb":
                rows = run_views_duckdb(compiled, export_dir)
            elif engine == "spark":
                rows = run_views_spark(compiled, export_dir, spark_master)
            else:
                rows = run_views(compiled, iter_export(export_dir))
            result = run_plan(checked, rows)
        if server:
            import httpx

            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = httpx.get(server.rstrip("/") + "/outcomes", params={"suppress": "false"}, headers=headers, timeout=120)
            if r.status_code != 200:
                raise ConfigError(f"{server}/outcomes answered {r.status_code}")
            report = r.json()
        else:
            from adapter.outcomes import outcomes_report
            from adapter.spec.loader import load_drug_costs

            report = outcomes_report(_store().cohort(None), drug_costs=load_drug_costs(get_settings().mappings_dir))
        differences = compare_with_outcomes(checked, result, report)
        left = uncompared(checked, report)
    except AdapterError as exc:
        _fail(exc)
    if fmt == "json":
        sys.stdout.write(json.dumps({"plan": result, "differences": differences, "uncompared": left},
                                    indent=2, default=str) + "\n")
    else:
        scopes = [*result["sites"], "pooled"]
        table = Table("figure", *scopes, title=f"Figures of plan {checked['id']} from the views")
        for f in checked["figures"]:
            if f["type"] not in ("count", "proportion", "table") or f.get("columns"):
                continue  # survival analyses and two-way tables: --format json
            cells = []
            for scope in scopes:
                value = comparable(f["type"], (result["pooled"] if scope == "pooled" else result["sites"][scope])[f["id"]], facade=False)
                cells.append(str(value["count"]) if f["type"] == "proportion" else
                             ", ".join(f"{k} {v}" for k, v in value.items()) if f["type"] == "table" else str(value))
            table.add_row(f["id"] + ("" if f.get("outcomes") else " (plan only)"), *cells)
        console.print(table)
        if left:  # e.g. the vial costs: nothing is left out in silence
            console.print(f"{len(left)} number(s) of /outcomes no figure of the plan compares: {', '.join(left)}")
        for d in differences:
            err_console.print(f"[red]differs[/red] {d}")
    if differences:
        _fail(FiguresDiffer(f"{len(differences)} figure(s) differ between the plan and the facade"))
    if fmt == "table":
        console.print("every figure agrees with the facade")


def _print_outcomes(report: dict[str, Any], plan: dict[str, Any] | None = None) -> None:
    from adapter.outcomes.render import outcome_table

    columns, rows = outcome_table(report, plan)
    t = Table(title=f"outcomes (KM at {report['timepoint_months']:g} months; 95% CI)")
    t.add_column("figure")
    for name in columns:
        t.add_column(name, justify="right")
    for label, cells in rows:
        t.add_row(label, *cells)
    console.print(t)


_SCAN_FORMATS = {".csv": "csv", ".txt": "csv", ".tsv": "csv", ".xlsx": "xlsx", ".xlsm": "xlsx",
                 ".hl7": "hl7v2", ".oru": "hl7v2"}


@app.command()
def scan(
    file: Annotated[Path, typer.Argument(help="the export to profile (CSV, XLSX, HL7 v2 or REDCap CSV)")],
    format: Annotated[str | None, typer.Option("--format", help="csv, xlsx, hl7v2 or redcap (default: from the extension)")] = None,  # noqa: A002
    encoding: Annotated[str | None, typer.Option(help="text encoding (default: detected)")] = None,
    delimiter: Annotated[str | None, typer.Option(help="CSV delimiter (default: sniffed)")] = None,
    data_dictionary: Annotated[Path | None, typer.Option(help="REDCap data dictionary CSV (implies --format redcap)")] = None,
    top: Annotated[int, typer.Option(help="most frequent values shown per column", min=1, max=100)] = 10,
    site: Annotated[str, typer.Option(help="site code for the draft mapping")] = "new-site",
    export: Annotated[str | None, typer.Option(help="export name for the draft mapping (default: from the file name)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the draft mapping, its profile (JSON) and a draft site.yaml")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """Profile an export (WhiteRabbit-like: columns, types, value frequencies; names and identifiers
    masked) and write a draft mapping file to start onboarding from."""
    import re

    from adapter import scan as scanning
    from adapter.readers import reader_for
    from adapter.spec.models import ReaderSpec

    fmt = format or ("redcap" if data_dictionary else _SCAN_FORMATS.get(file.suffix.lower()))
    if fmt is None:
        _fail(ConfigError(f"cannot tell the format of {file.name} from its extension; give --format"))
    export = export or (re.sub(r"[^a-z0-9_]+", "_", file.stem.lower()).strip("_")[:32] or "export")
    try:
        spec = ReaderSpec(format=fmt, encoding=encoding, delimiter=delimiter,
                          data_dictionary=data_dictionary.name if data_dictionary else None)
        if data_dictionary:  # the reader opens the path; a mapping names a file next to itself
            spec = spec.model_copy(update={"data_dictionary": str(data_dictionary)})
    except ValueError as exc:
        _fail(ConfigError(f"reader options: {exc}"))
    try:
        reader = reader_for(fmt)(file, spec)
        detected: dict[str, str | None] = {}
        if fmt in ("csv", "redcap"):
            detected["encoding"], detected["delimiter"] = reader.dialect()
        elif fmt == "hl7v2":
            detected["encoding"] = encoding or "utf-8"
        paths = reader.columns() if fmt == "hl7v2" else None
        with err_console.status(f"scanning {file.name}"):
            reports = [scanning.profile_rows(reader.rows(sh, set(paths or ())), file.name, fmt, sh, top, paths)
                       for sh in reader.sheets()]
    except AdapterError as exc:
        _fail(exc)
    dd_name = data_dictionary.name if data_dictionary else None
    draft = scanning.draft_mapping(reports, site=site, export=export, reader=scanning.reader_block(
        fmt, reports, data_dictionary=dd_name, **detected))
    if as_json:
        console.print_json(json.dumps([r.to_json() for r in reports], ensure_ascii=False))
    else:
        for rep in reports:
            _print_scan(rep)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{export}.yaml").write_text(draft, encoding="utf-8")
        (out / f"{export}.scan.json").write_text(
            json.dumps([r.to_json() for r in reports], indent=2, ensure_ascii=False), encoding="utf-8")
        if data_dictionary and not (out / data_dictionary.name).exists():
            (out / data_dictionary.name).write_bytes(data_dictionary.read_bytes())
        if not (out / "site.yaml").exists():
            (out / "site.yaml").write_text(scanning.draft_site(site, scanning.identifying_columns(reports)),
                                              encoding="utf-8")
        console.print(f"draft mapping: {out / f'{export}.yaml'}  (profile: {export}.scan.json)")


def _print_scan(rep: Any) -> None:
    from rich.markup import escape

    where = f"{rep.file}" + (f" [{rep.sheet}]" if rep.sheet else "")
    t = Table(title=f"{where}: {rep.rows} rows ({rep.format}), {rep.malformed} malformed")
    for c in ("column", "type", "blank", "distinct", "range", "most frequent (masked: shapes)"):
        t.add_column(c, overflow="fold")
    for c in rep.columns:
        typ = c.type + (f" {c.date_formats[0]}" + ("?" if len(c.date_formats) > 1 else "") if c.date_formats else "")
        rng = f"{c.minimum} .. {c.maximum}" if c.minimum is not None else ""
        vals = ", ".join(f"{v} ({n})" for v, n in c.top[:5])
        t.add_row(escape(c.name), typ, f"{c.blank}/{c.rows}", str(c.distinct), rng,
                  escape((f"[masked: {c.masked}] " if c.masked else "") + vals))
    console.print(t)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="interface to listen on (default: setting ADAPTER_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: setting ADAPTER_PORT, 8000)")] = None,
) -> None:
    """Serve the FHIR R4 REST API (and the outcomes facade) with uvicorn."""
    import uvicorn

    from adapter.api import create_app

    settings = get_settings()
    host = host or settings.host
    if settings.env == "development":
        if host not in ("127.0.0.1", "localhost", "::1"):
            _fail(ConfigError(f"development mode serves on 127.0.0.1 only, not {host}: set ADAPTER_ENV=production "
                              "(with its secrets) to listen on other interfaces"))
        err_console.print(Panel.fit(
            "[bold]DEVELOPMENT MODE[/] — for the local demo, not for patient data.\n"
            f"Authentication is {'ON' if settings.auth_enabled else 'OFF (every request acts as an unrestricted development client)'}; "
            "development secrets are in use; listening on 127.0.0.1 only.\n"
            "Production: ADAPTER_ENV=production with ADAPTER_ID_KEY, ADAPTER_PSEUDONYM_KEY, ADAPTER_TOKEN_KEY "
            "and ADAPTER_DATABASE_URL (README: Security).", border_style="yellow"))
    try:
        api = create_app(settings)
    except AdapterError as exc:
        _fail(exc)
    console.print(f"serving FHIR R4 at http://{host}:{port or settings.port}/metadata")
    from adapter.logs import configure_logging

    configure_logging()
    if settings.mllp_site or settings.mllp_mapping:
        _serve_mllp_beside(api, settings)
    # our request lines (adapter.access, with request ids) replace uvicorn's access log
    uvicorn.run(api, host=host, port=port or settings.port, log_level="info", log_config=None, access_log=False)


@app.command()
def mllp(
    site: Annotated[str, typer.Option(help="site code, a folder under mappings/")],
    mapping: Annotated[str, typer.Option(help="the site's HL7 v2 mapping: mappings/<site>/<name>.yaml")],
    host: Annotated[str | None, typer.Option(help="interface (default: setting ADAPTER_MLLP_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (default: setting ADAPTER_MLLP_PORT, 2575)")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="also serve Prometheus metrics on this port")] = None,
) -> None:
    """Listen for HL7 v2 results over MLLP: each message is stored with the site's mapping and only
    then acknowledged (AA; AE with ERR for a row issue, kept as a dead letter; AR for what cannot be
    parsed or is for another site)."""
    from adapter.logs import configure_logging
    from adapter.mllp.listener import config_from_settings, run

    settings = get_settings()
    try:
        config = config_from_settings(settings, site, mapping, host, port)
        if settings.env == "development" and config.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"development mode listens on 127.0.0.1 only, not {config.host}: set ADAPTER_ENV=production")
        store = _store()
    except AdapterError as exc:
        _fail(exc)
    configure_logging()
    err_console.print(f"MLLP listener for {site}/{mapping} on {config.host}:{config.port}"
                      + (" (TLS)" if config.tls else ""), highlight=False)
    try:
        run(config, store, settings, metrics_port)
    except AdapterError as exc:
        _fail(exc)


dead_letters_app = typer.Typer(no_args_is_help=True, help="HL7 v2 messages acknowledged AE or AR over MLLP: list, replay.")
app.add_typer(dead_letters_app, name="dead-letters")


@dead_letters_app.command("list")
def dead_letters_list(
    site: Annotated[str | None, typer.Option(help="only this site")] = None,
    all_: Annotated[bool, typer.Option("--all", help="also those replayed since")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """The kept messages (id, time, MSH-10, ACK code, errors), never their content."""
    from adapter.store import dead_letters

    try:
        rows = [d.listing() for d in dead_letters.letters(_store(), site, include_replayed=all_)]
    except AdapterError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
        return
    t = Table(title=f"MLLP dead letters ({len(rows)})")
    for col in ("id", "received", "site/mapping", "MSH-10", "ack", "errors", "replayed"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], r["received"][:19], f"{r['site']}/{r['mapping']}", r["control_id"] or "", r["ack_code"],
                  "; ".join(f"{e['location']}: {e['reason']}" for e in r["errors"])[:200], r["replayed"] or "")
    console.print(t)


@dead_letters_app.command("replay")
def dead_letters_replay(
    ids: Annotated[list[str] | None, typer.Argument(help="dead-letter ids (default: every one not replayed)")] = None,
    site: Annotated[str | None, typer.Option(help="with no ids: only this site's")] = None,
) -> None:
    """Run kept messages through their site's mapping again (after the mapping, a code table or the
    sender's data was fixed). A message that is stored now is marked replayed; one that still
    fails stays, with its errors printed. Exit 0 when every one was stored, 9 otherwise."""
    from adapter.mllp.receive import receive
    from adapter.store import dead_letters

    settings = get_settings()
    try:
        store = _store()
        todo = ([dead_letters.letter(store, i) for i in ids] if ids else dead_letters.letters(store, site))
    except AdapterError as exc:
        _fail(exc)
    failed = 0
    for i, d in zip(ids or [x.id for x in todo], todo, strict=True):
        if d is None:
            err_console.print(f"[red]no dead letter {i}[/]")
            failed += 1
            continue
        if d.replayed:
            console.print(f"{d.id}: already replayed ({d.replayed})", highlight=False)
            continue
        receipt = receive(d.message, d.site, d.mapping, store, settings=settings, replay_of=d.id)
        if receipt.ack_code == "AA" and receipt.report is not None:
            dead_letters.mark_replayed(store, d.id, receipt.report.ingestion_id)
            console.print(f"{d.id} (MSH-10 {d.control_id}): stored", highlight=False)
        else:
            failed += 1
            console.print(f"{d.id} (MSH-10 {d.control_id}): still {receipt.ack_code}: "
                          + "; ".join(f"{e.location}: {e.reason}" for e in receipt.errors), highlight=False)
    if failed:
        raise typer.Exit(9)


def _serve_mllp_beside(api: Any, settings: Any) -> None:
    """``adapter serve`` with ADAPTER_MLLP_SITE and ADAPTER_MLLP_MAPPING: the MLLP listener in a
    thread of its own (its own event loop), its metrics on the API's ``/metrics``."""
    import asyncio
    import threading

    from adapter.mllp.listener import Listener, Metrics, config_from_settings

    if not (settings.mllp_site and settings.mllp_mapping):
        _fail(ConfigError("ADAPTER_MLLP_SITE and ADAPTER_MLLP_MAPPING go together"))
    try:
        config = config_from_settings(settings, settings.mllp_site, settings.mllp_mapping)
        if settings.env == "development" and config.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError(f"development mode listens on 127.0.0.1 only, not {config.host}")
        listener = Listener(config, _store(), settings, metrics=Metrics(api.state.metrics_registry))
    except AdapterError as exc:
        _fail(exc)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(listener.start())
    threading.Thread(target=loop.run_forever, name="mllp", daemon=True).start()
    console.print(f"MLLP listener for {config.site}/{config.mapping} on {config.host}:{listener.port}", highlight=False)


clients_app = typer.Typer(no_args_is_help=True, help="Register, list and revoke SMART Backend Services clients.")
app.add_typer(clients_app, name="clients")


@clients_app.command("add")
def clients_add(
    name: Annotated[str, typer.Option(help="who the client is (e.g. 'HITO integration engine')")],
    role: Annotated[str, typer.Option(help="site | coordinator | subscriber | admin")],
    jwks: Annotated[Path, typer.Option(help="the client's public JWKS (JSON file; RS384 or ES384 keys)")],
    site: Annotated[str | None, typer.Option(help="the site a site or subscriber client is bound to")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="SMART system scope it may get (repeat; default: the role's)")] = None,
) -> None:
    """Register a client; prints its client_id (exit 2 when the registration is not valid)."""
    from adapter.auth.clients import RegistrationError, check_registration
    from adapter.store.security import ClientRegistry

    try:
        doc = json.loads(jwks.read_text(encoding="utf-8"))
        scopes = check_registration(role, site, scope, doc)
    except (OSError, ValueError, RegistrationError) as exc:
        _fail(ConfigError(f"{jwks}: {exc}"))
    store = _store()
    with _audited(store, f"adapter clients add --role {role} --site {site or '-'}"):
        client = ClientRegistry(store).add(name, role, site, scopes, doc)
    console.print(f"client_id: {client.client_id}")
    console.print(f"role: {role}{f' (site {site})' if site else ''}; scopes: {' '.join(scopes)}", highlight=False)


@clients_app.command("list")
def clients_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """List registered clients (ids, roles, sites, scopes, key ids; never keys)."""
    from adapter.store.security import ClientRegistry

    rows = [c.summary() for c in ClientRegistry(_store()).all()]
    if as_json:
        print(json.dumps(rows, indent=2))  # noqa: T201
        return
    table = Table("client_id", "name", "role", "site", "scopes", "created", "revoked")
    for r in rows:
        table.add_row(r["client_id"], r["name"], r["role"], r["site"] or "", " ".join(r["scopes"]), r["created"][:19],
                      (r["revoked"] or "")[:19])
    console.print(table)


@clients_app.command("revoke")
def clients_revoke(client_id: Annotated[str, typer.Argument(help="the client to revoke")]) -> None:
    """Revoke a client: its assertions and its current access tokens stop working (exit 2 if unknown)."""
    from adapter.store.security import ClientRegistry

    store = _store()
    with _audited(store, f"adapter clients revoke {client_id[:64]}"):
        if not ClientRegistry(store).revoke(client_id):
            _fail(ConfigError(f"no active client {client_id}"))
    console.print(f"revoked {client_id}")


@clients_app.command("assertion")
def clients_assertion(
    client_id: Annotated[str, typer.Option(help="the registered client_id")],
    key: Annotated[Path, typer.Option(help="the client's private key (PEM)")],
    token_url: Annotated[str, typer.Option(help="the server's token endpoint, e.g. http://127.0.0.1:8000/auth/token")],
    kid: Annotated[str | None, typer.Option(help="the key id registered in the JWKS")] = None,
    alg: Annotated[str, typer.Option(help="RS384 or ES384")] = "RS384",
) -> None:
    """Print a signed client assertion (5-minute JWT) for the token endpoint: a tool for a client's
    operator testing with curl; the key stays on the client's side."""
    import time
    import uuid

    import jwt

    now = int(time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "jti": str(uuid.uuid4())}
    try:
        token = jwt.encode(claims, key.read_bytes(), algorithm=alg, headers={"kid": kid} if kid else None)
    except (OSError, ValueError, jwt.PyJWTError) as exc:
        _fail(ConfigError(f"{key}: cannot sign with it ({exc.__class__.__name__})"))
    print(token)  # noqa: T201


@app.command("audit")
def audit(
    since: Annotated[str | None, typer.Option(help="only events recorded at or after this instant (e.g. 2026-12-01)")] = None,
    until: Annotated[str | None, typer.Option(help="only events recorded before this instant")] = None,
    agent: Annotated[str | None, typer.Option(help="only this client id (or cli:<user>)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the AuditEvents as NDJSON here (for archiving)")] = None,
) -> None:
    """List the audit trail (newest first), or write it as NDJSON to archive it; on the host only."""
    from adapter.store.security import AuditTrail

    trail = AuditTrail(_store())
    with _audited(trail.store, "adapter audit" + (" --out" if out else "")):
        _, events = trail.search(since=since, until=until, client_id=agent, count=10_000_000)
    if out:
        with out.open("w", encoding="utf-8") as fh:
            for ev in reversed(events):  # oldest first, as an archive is read
                fh.write(json.dumps(ev, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(events)} AuditEvent(s) to {out}")
        return
    table = Table("recorded", "agent", "action", "outcome", "request")
    for ev in events[:200]:
        table.add_row(ev["recorded"][:19], ev["agent"][0]["who"]["identifier"]["value"], ev["subtype"][0]["code"],
                      ev["outcomeDesc"], ev["entity"][0]["description"][:80])
    console.print(table)
    if len(events) > 200:
        console.print(f"… {len(events) - 200} more; use --out FILE for all")


def _one_line_help(typer_app: typer.Typer) -> None:
    """``adapter --help`` lists each command with one line: the first sentence of its docstring
    (the whole docstring stays in ``adapter COMMAND --help``)."""
    for cmd in typer_app.registered_commands:
        doc = " ".join((cmd.callback.__doc__ or "").split()) if cmd.callback else ""
        if doc and cmd.short_help is None:
            first = re.split(r"(?<=[a-z)])\. ", doc, maxsplit=1)[0]
            head, colon, _ = first.partition(": ")
            cmd.short_help = (head if colon and head.count("(") == head.count(")") else first).rstrip(".:")


_one_line_help(app)
_one_line_help(clients_app)


def main() -> None:
    """Entry point that maps click's usage error (2) to 64, so that 2 always means configuration."""
    try:
        rc = app(standalone_mode=False)  # click returns the code of a typer.Exit raised by a command
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except Exception as e:  # click usage errors
        import click
        from pydantic import ValidationError

        if isinstance(e, ValidationError):  # settings that fail fast (adapter/config.py)
            err_console.print(f"[bold red]error[/] (settings, exit 2): {'; '.join(str(x['msg']) for x in e.errors())}",
                              highlight=False)
            sys.exit(2)

        if isinstance(e, click.exceptions.UsageError):
            e.show()
            sys.exit(64)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        raise
    sys.exit(0)
