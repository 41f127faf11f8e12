"""Bulk Data Access STU2 $export over HTTP (a real server, SQLite and PostgreSQL): kick-off, poll,
manifest and download for system, Patient and Group exports; every NDJSON line valid against the
official R4 JSON Schema; counts equal to the store's; _type, _typeFilter, _since; de-identified
exports; errors; cancel; 429; and a server killed mid-export that completes after a restart."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
from sqlalchemy import func, select

from adapter.bulk.runner import run_job
from adapter.config import ROOT, Settings
from adapter.ingest import ingest_file
from adapter.mapping.study import site_group_id, study_group_id
from adapter.privacy import date_shift, deidentify
from adapter.store import Store
from adapter.store.exports import ExportJobs
from adapter.store.schema import resources
from tests.conftest import EXAMPLE_FILES, EXAMPLES, _store_on
from tests.server import Server, _free_port, _post_export
from tests.test_privacy import _leaks

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
UK = EXAMPLES / "uk_infants"
FILES = [*EXAMPLE_FILES, ("uk-infants", "registry", UK / "uk_infant_blinatumomab_registry.csv"),
         ("uk-infants", "mrd_lab", UK / "uk_mrd_lab_ORU_R01.hl7")]
MRD = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"


@pytest.fixture(scope="module")
def r4_schema() -> jsonschema_rs.Validator:
    return jsonschema_rs.validator_for(json.loads((ROOT / "profiles" / "fhir.r4.schema.json").read_text()))


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def bulk(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    """A server holding the HITO, HUANL and UK exports; files split past 20 kB."""
    with _store_on(request.param, tmp_path_factory.mktemp("bulk")) as store:
        srv = Server(store, settings.model_copy(update={
            "export_dir": tmp_path_factory.mktemp("bulk-files"), "export_max_file_bytes": 20_000, "export_max_jobs": 4}))
        try:
            for site, mapping, path in FILES:
                assert _post_export(srv.client, path, site, mapping).status_code == 200
            yield srv
        finally:
            srv.stop()


def _kickoff(client: httpx.Client, url: str, params: dict[str, str] | None = None,
             body: dict[str, Any] | None = None) -> str:
    r = client.post(url, json=body, headers=ASYNC) if body is not None else client.get(url, params=params, headers=ASYNC)
    assert r.status_code == 202, r.text
    return r.headers["content-location"]


def _wait(client: httpx.Client, status_url: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(status_url)
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/json") and "expires" in r.headers
            return r.json()
        assert r.status_code == 202, r.text
        assert r.headers["x-progress"] and int(r.headers["retry-after"]) >= 1
        assert time.monotonic() < deadline, "the export did not finish"
        time.sleep(0.1)


def _download(client: httpx.Client, manifest: dict[str, Any], schema: jsonschema_rs.Validator) -> dict[str, list[dict[str, Any]]]:
    """Every output file, its lines parsed and checked against the R4 JSON Schema and its count."""
    out: dict[str, list[dict[str, Any]]] = {}
    for o in manifest["output"]:
        r = client.get(o["url"])
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert len(lines) == o["count"] > 0
        for res in lines:
            assert res["resourceType"] == o["type"]
            errors = [e.message for e in schema.iter_errors(res)]
            assert not errors, (res["resourceType"], errors[:2])
        out.setdefault(o["type"], []).extend(lines)
    return out


def _export(srv: Server, url: str, schema: jsonschema_rs.Validator, params: dict[str, str] | None = None,
            body: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    manifest = _wait(srv.client, _kickoff(srv.client, url, params, body))
    return manifest, _download(srv.client, manifest, schema)


def _store_counts(store: Store, *where: Any) -> dict[str, int]:
    q = select(resources.c.type, func.count()).where(resources.c.deleted.is_(False), *where).group_by(resources.c.type)
    with store.engine.connect() as conn:
        return dict(conn.execute(q).all())


def test_system_export_holds_every_resource(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    manifest, files = _export(bulk, "/$export", r4_schema)
    assert manifest["request"].endswith("/$export") and manifest["requiresAccessToken"] is False
    assert manifest["transactionTime"] and manifest["error"] == []
    assert {t: len(v) for t, v in files.items()} == _store_counts(bulk.store)
    # a type past 20 kB is split into parts, each a whole NDJSON file
    parts = Counter(o["type"] for o in manifest["output"])
    assert parts["Observation"] >= 2
    assert len({r["id"] for r in files["Observation"]}) == len(files["Observation"])


def test_patient_export_holds_every_compartment(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    _, files = _export(bulk, "/Patient/$export", r4_schema, {"_outputFormat": "application/fhir+ndjson"})
    assert {t: len(v) for t, v in files.items()} == _store_counts(bulk.store, resources.c.patient_id.is_not(None))
    assert "Organization" not in files and "Provenance" not in files


def test_group_exports_hold_their_members_only(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    hito = bulk.client.get(f"/Group/{site_group_id('hito')}").json()
    members = [m["entity"]["reference"].split("/")[1] for m in hito["member"]]
    assert hito["quantity"] == len(members) == 9
    _, files = _export(bulk, f"/Group/{site_group_id('hito')}/$export", r4_schema)
    assert {t: len(v) for t, v in files.items()} == _store_counts(bulk.store, resources.c.patient_id.in_(members))
    study = bulk.client.get(f"/Group/{study_group_id('pedall-blinatumomab')}").json()
    assert study["quantity"] == 9 + 12 + 11  # HITO, HUANL, UK

    # a Group created through the API, with two members
    two = sorted(members)[:2]
    group = {"resourceType": "Group", "type": "person", "actual": True,
             "meta": {"profile": ["https://w3id.org/pedall-fhir/StructureDefinition/pedall-patient-group"]},
             "identifier": [{"system": "https://example.org/cohorts", "value": "two"}], "quantity": 2,
             "member": [{"entity": {"reference": f"Patient/{p}"}} for p in two]}
    r = bulk.client.post("/Group", json=group)
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    _, files = _export(bulk, f"/Group/{gid}/$export", r4_schema, {"_type": "Patient,Observation"})
    assert sorted(p["id"] for p in files["Patient"]) == two
    assert set(files) <= {"Patient", "Observation"}
    assert {t: len(v) for t, v in files.items()} == _store_counts(
        bulk.store, resources.c.patient_id.in_(two), resources.c.type.in_(["Patient", "Observation"]))


def test_post_kickoff_with_type_filter(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Observation"},
        {"name": "_typeFilter", "valueString": f"Observation?code={MRD}&value-quantity=ge1"}]}
    manifest, files = _export(bulk, "/$export", r4_schema, body=body)
    expected = bulk.client.get("/Observation", params={"code": MRD, "value-quantity": "ge1", "_summary": "count"}).json()
    assert len(files["Observation"]) == expected["total"] > 0
    assert all(o["code"]["coding"][0]["code"] == "mrd" for o in files["Observation"])


def test_since_returns_only_what_changed(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    first, _ = _export(bulk, "/$export", r4_schema, {"_type": "Observation"})
    mrd = bulk.client.get("/Observation", params={"code": MRD, "_count": "1"}).json()["entry"][0]["resource"]
    mrd.setdefault("note", []).append({"text": "reviewed"})
    assert bulk.client.put(f"/Observation/{mrd['id']}", json=mrd).status_code == 200
    # one instant, written with its UTC offset, +05:30 and -06:00: the same export (before: the
    # offset was compared as text, so east of UTC lost the change and west re-sent everything)
    since = datetime.fromisoformat(first["transactionTime"].replace("Z", "+00:00"))
    for spelling in (since.isoformat(), since.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
                     since.astimezone(timezone(timedelta(hours=-6))).isoformat()):
        _, files = _export(bulk, "/$export", r4_schema, {"_type": "Observation,Patient", "_since": spelling})
        assert list(files) == ["Observation"] and [r["id"] for r in files["Observation"]] == [mrd["id"]], spelling
        assert files["Observation"][0]["meta"]["versionId"] == "2"


def test_deidentified_export_keeps_no_identity(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    obs = bulk.client.get("/Observation", params={"code": MRD, "_count": "1", "_sort": "-date"}).json()["entry"][0]["resource"]
    obs["note"] = [{"text": "sample drawn by the attending; see chart"}]
    assert bulk.client.put(f"/Observation/{obs['id']}", json=obs).status_code == 200
    manifest, files = _export(bulk, "/Patient/$export", r4_schema, {"_deidentify": "true"})
    ext = manifest["extension"]["https://w3id.org/pedall-fhir/bulk"]["deidentification"]
    assert ext["birthDate"] == "truncated to year-month" and "Provenance" in ext["excludedTypes"]
    source = list(bulk.store.iter_resources("Patient"))
    local_ids = {i["value"] for p in source for i in p["identifier"]}
    assert local_ids and any(len(p.get("birthDate", "")) == 10 for p in source)
    text = "\n".join(json.dumps(r) for v in files.values() for r in v)
    assert not [i for i in local_ids if f'"{i}"' in text]  # as JSON values: no chance match inside a hex id
    # each birth date cut to year-month (the same day may be another patient's sample or death date)
    exact = {p["id"]: p.get("birthDate") for p in source}
    for p in files["Patient"]:
        assert "birthDate" not in p or (len(p["birthDate"]) <= 7 and exact[p["id"]].startswith(p["birthDate"]))
    assert not _leaks(text)
    assert not [r["id"] for v in files.values() for r in v if "note" in r or "text" in r]  # free text and narrative
    assert obs["id"] in {r["id"] for r in files["Observation"]} and "sample drawn" not in text
    assert all(p["identifier"][0]["system"].endswith("/sid/study-pseudonym") for p in files["Patient"])
    assert len(files["Patient"]) == len(source)
    # the same counts as the identified export: nothing is dropped but Provenance
    assert {t: len(v) for t, v in files.items()} == _store_counts(bulk.store, resources.c.patient_id.is_not(None))


@pytest.mark.parametrize(("url", "params", "headers", "status", "says"), [
    ("/$export", {}, {"Accept": "application/fhir+json"}, 400, "Prefer: respond-async"),
    ("/$export", {"_type": "Nonsense"}, ASYNC, 400, "not a resource type"),
    ("/$export", {"_outputFormat": "text/csv"}, ASYNC, 400, "_outputFormat"),
    ("/$export", {"_since": "yesterday"}, ASYNC, 400, "_since"),
    ("/$export", {"_elements": "id"}, ASYNC, 400, "handling=lenient"),
    ("/$export", {"_type": "Patient", "_typeFilter": "Observation?code=x"}, ASYNC, 400, "_type does not include"),
    ("/$export", {"_typeFilter": "Observation?shoe-size=3"}, ASYNC, 400, "unknown search parameter"),
    ("/Group/no-such-group/$export", {}, ASYNC, 404, "Group/no-such-group"),
])
def test_bad_kickoffs_get_an_operation_outcome(bulk: Server, url: str, params: dict[str, str], headers: dict[str, str],
                                               status: int, says: str) -> None:
    r = bulk.client.get(url, params=params, headers=headers)
    assert r.status_code == status and r.json()["resourceType"] == "OperationOutcome"
    assert says in r.json()["issue"][0]["diagnostics"]


def test_lenient_handling_names_what_it_ignored(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    status = bulk.client.get("/$export", params={"_type": "Organization", "_elements": "id"},
                             headers={**ASYNC, "Prefer": "respond-async, handling=lenient"}).headers["content-location"]
    manifest = _wait(bulk.client, status)
    assert manifest["extension"]["https://w3id.org/pedall-fhir/bulk"]["ignoredParameters"] == ["_elements"]
    assert [o["type"] for o in manifest["output"]] == ["Organization"]


def test_unknown_job_and_file_are_404(bulk: Server) -> None:
    assert bulk.client.get("/$export-poll-status/nope").status_code == 404
    manifest = _wait(bulk.client, _kickoff(bulk.client, "/$export", {"_type": "Organization"}))
    url = manifest["output"][0]["url"]
    job = url.split("/")[-2]
    assert bulk.client.get(f"/$export-file/{job}/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert bulk.client.get(f"/$export-file/{job}/Patient.1.ndjson").status_code == 404  # not in the manifest
    # deleting a completed export removes its files; the status is then 404
    assert bulk.client.delete(f"/$export-poll-status/{job}").status_code == 202
    assert bulk.client.get(f"/$export-poll-status/{job}").status_code == 404
    assert bulk.client.get(url).status_code == 404


# ------------------------------------------------------------------- throttled server in a process


def _serve(env: dict[str, str], port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    port = port or _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve", "--port", str(port)], env=env, cwd=ROOT,  # noqa: S603
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def throttled(tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[tuple[dict[str, str], Store]]:
    """Environment for `adapter serve` on a SQLite store holding the examples, exporting at most
    150 resources/s (so an export lasts a few seconds), one export at a time, a 2 s stale limit."""
    folder = tmp_path_factory.mktemp("throttled")
    url = f"sqlite:///{folder / 'db.sqlite3'}"
    store = Store(url)
    store.migrate()
    for site, mapping, path in FILES:
        assert ingest_file(path, site, mapping, store, settings=settings.model_copy(update={"database_url": url})).stored
    env = {**os.environ, "ADAPTER_DATABASE_URL": url, "ADAPTER_ID_KEY": settings.id_key,
           "ADAPTER_EXPORT_DIR": str(folder / "exports"), "ADAPTER_EXPORT_MAX_ROWS_PER_SECOND": "150",
           "ADAPTER_EXPORT_MAX_JOBS": "1", "ADAPTER_EXPORT_STALE_SECONDS": "2"}
    yield env, store


def test_too_many_exports_get_429_and_cancel_frees_the_slot(throttled: tuple[dict[str, str], Store]) -> None:
    env, _ = throttled
    proc, base = _serve(env)
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            first = _kickoff(c, "/$export")
            busy = c.get("/$export", headers=ASYNC)
            assert busy.status_code == 429 and busy.headers["retry-after"]
            assert busy.json()["issue"][0]["code"] == "throttled"
            assert c.delete(first).status_code == 202
            assert c.get(first).status_code == 404
            second = _kickoff(c, "/$export", {"_type": "Organization"})
            assert _wait(c, second)["output"][0]["type"] == "Organization"
            job = first.rsplit("/", 1)[1]
            time.sleep(0.5)  # the worker notices the cancel at its next heartbeat and removes the folder
            assert not (Path(env["ADAPTER_EXPORT_DIR"]) / job).exists()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_server_killed_mid_export_completes_it_after_restart(throttled: tuple[dict[str, str], Store]) -> None:
    env, store = throttled
    proc, base = _serve(env)
    with httpx.Client(base_url=base, timeout=30) as c:
        status = _kickoff(c, "/$export")
        while "resources written" not in (c.get(status).headers.get("x-progress") or ""):
            time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # no shutdown: the job is left in progress, its files partial
    proc.wait(10)
    job = status.rsplit("/", 1)[1]
    partial = list((Path(env["ADAPTER_EXPORT_DIR"]) / job).iterdir())
    assert partial, "the export had written nothing when the server was killed"

    proc, base = _serve(env, int(base.rsplit(":", 1)[1]))  # the same public URL, as after a real restart
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            manifest = _wait(c, status, timeout=120)
            names = {o["url"].rsplit("/", 1)[1] for o in manifest["output"]}
            on_disk = {p.name for p in (Path(env["ADAPTER_EXPORT_DIR"]) / job).iterdir()}
            assert on_disk == names  # no .part file left, nothing unlisted
            counts: Counter[str] = Counter()
            for o in manifest["output"]:
                lines = c.get(o["url"]).text.splitlines()
                assert len(lines) == o["count"]
                counts[o["type"]] += len([json.loads(x) for x in lines])  # every line whole JSON
            assert dict(counts) == _store_counts(store)
    finally:
        proc.terminate()
        proc.wait(10)


def test_group_everything_is_a_collection_bundle(bulk: Server, r4_schema: jsonschema_rs.Validator) -> None:
    gid = site_group_id("uk-infants")
    b = bulk.client.get(f"/Group/{gid}/$everything").json()
    assert b["resourceType"] == "Bundle" and b["type"] == "collection"
    assert not [e.message for e in r4_schema.iter_errors(b)][:1]
    types = Counter(e["resource"]["resourceType"] for e in b["entry"])
    assert types["Group"] == 1 and types["Patient"] == 11 and types["Organization"] == 1
    members = [m["entity"]["reference"].split("/")[1] for m in b["entry"][0]["resource"]["member"]]
    assert sum(types.values()) == 1 + 1 + sum(_store_counts(bulk.store, resources.c.patient_id.in_(members)).values())
    deid = bulk.client.get(f"/Group/{gid}/$everything", params={"_deidentify": "true"}).json()
    local = {i["value"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient" for i in e["resource"]["identifier"]}
    assert not [i for i in local if f'"{i}"' in json.dumps(deid)]
    # a Group too large for one Bundle is sent to $export
    big = {"resourceType": "Group", "type": "person", "actual": True, "quantity": 101,
           "meta": {"profile": ["https://w3id.org/pedall-fhir/StructureDefinition/pedall-patient-group"]},
           "identifier": [{"system": "https://example.org/cohorts", "value": "big"}],
           "member": [{"entity": {"reference": f"Patient/p{i}"}} for i in range(101)]}
    r = bulk.client.post("/Group", json=big)
    assert r.status_code == 201, r.text
    r = bulk.client.get(f"/Group/{r.json()['id']}/$everything")
    assert r.status_code == 413 and "$export" in r.json()["issue"][0]["diagnostics"]


def test_cli_export_writes_ndjson_and_a_manifest(throttled: tuple[dict[str, str], Store], tmp_path: Path,
                                                 r4_schema: jsonschema_rs.Validator) -> None:
    env, store = throttled
    env = {**env, "ADAPTER_EXPORT_MAX_ROWS_PER_SECOND": "0", "COLUMNS": "200"}
    gid = site_group_id("huanl")
    p = subprocess.run([sys.executable, "-m", "adapter", "export", "--group", gid, "--out", str(tmp_path / "x")],  # noqa: S603
                       capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    members = [m["entity"]["reference"].split("/")[1] for m in store.read("Group", gid)["member"]]
    counts: Counter[str] = Counter()
    for o in manifest["output"]:
        lines = Path(o["url"].removeprefix("file://")).read_text().splitlines()
        assert len(lines) == o["count"]
        for line in lines:
            res = json.loads(line)
            assert not [e.message for e in r4_schema.iter_errors(res)][:1]
            counts[res["resourceType"]] += 1
    assert dict(counts) == _store_counts(store, resources.c.patient_id.in_(members))
    assert f"wrote {sum(counts.values())} resource(s)" in p.stdout
    # a de-identified export without the secret is refused with the configuration exit code
    env.pop("ADAPTER_PSEUDONYM_KEY", None)
    p = subprocess.run([sys.executable, "-m", "adapter", "export", "--patients", "--deidentify", "--out", str(tmp_path / "y")],  # noqa: S603
                       capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert p.returncode == 2 and "ADAPTER_PSEUDONYM_KEY" in p.stderr


def test_finished_exports_expire(throttled: tuple[dict[str, str], Store]) -> None:
    env, _ = throttled
    proc, base = _serve({**env, "ADAPTER_EXPORT_MAX_ROWS_PER_SECOND": "0", "ADAPTER_EXPORT_EXPIRY_SECONDS": "1"})
    try:
        with httpx.Client(base_url=base, timeout=30) as c:
            status = _kickoff(c, "/$export", {"_type": "Organization"})
            manifest = _wait(c, status)
            folder = Path(env["ADAPTER_EXPORT_DIR"]) / status.rsplit("/", 1)[1]
            assert folder.is_dir()
            deadline = time.monotonic() + 15
            while c.get(status).status_code != 404:
                assert time.monotonic() < deadline, "the export did not expire"
                time.sleep(0.2)
            assert not folder.exists() and c.get(manifest["output"][0]["url"]).status_code == 404
    finally:
        proc.terminate()
        proc.wait(10)


def test_deidentified_cli_export_shifts_each_patients_dates_alike(throttled: tuple[dict[str, str], Store],
                                                                    tmp_path: Path) -> None:
    """With ADAPTER_DEIDENTIFY_DATE_SHIFT_DAYS, every date of a patient moves by one offset (1-30
    days, earlier or later): intervals within a patient are kept, calendar dates are not."""
    env, store = throttled
    gid = site_group_id("hito")
    members = [m["entity"]["reference"].split("/")[1] for m in store.read("Group", gid)["member"]]
    env = {**env, "ADAPTER_EXPORT_MAX_ROWS_PER_SECOND": "0", "ADAPTER_PSEUDONYM_KEY": "k",
           "ADAPTER_DEIDENTIFY_DATE_SHIFT_DAYS": "30"}
    p = subprocess.run([sys.executable, "-m", "adapter", "export", "--group", gid, "--deidentify", "--type", "Observation",  # noqa: S603
                        "--type", "Patient", "--out", str(tmp_path / "d")], capture_output=True, text=True, env=env,
                       cwd=ROOT, check=False)
    assert p.returncode == 0, p.stderr
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    assert "shifted" in manifest["extension"]["https://w3id.org/pedall-fhir/bulk"]["deidentification"]["otherDates"]
    out = {json.loads(x)["id"]: json.loads(x) for o in manifest["output"]
           for x in Path(o["url"].removeprefix("file://")).read_text().splitlines()}
    offsets: dict[str, set[int]] = {}
    for rid, res in out.items():
        src = store.read(res["resourceType"], rid)
        if res["resourceType"] != "Observation" or "effectiveDateTime" not in src:
            continue
        a = date.fromisoformat(src["effectiveDateTime"][:10])
        b = date.fromisoformat(res["effectiveDateTime"][:10])
        offsets.setdefault(src["subject"]["reference"], set()).add((b - a).days)
    assert len(offsets) == len(members)
    assert all(len(o) == 1 and 1 <= abs(next(iter(o))) <= 30 for o in offsets.values())
    assert len({next(iter(o)) for o in offsets.values()}) > 1  # patients are not all moved alike
    for pid in members:  # the birth date moves with the patient's offset, then is cut to year-month
        shifted = out[pid].get("birthDate")
        if shifted:
            off = next(iter(offsets[f"Patient/{pid}"]))
            assert shifted == (date.fromisoformat(store.read("Patient", pid)["birthDate"]) + timedelta(days=off)).isoformat()[:7]


def test_deidentify_keeps_only_allowed_elements() -> None:
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "subject": {"reference": "Patient/p1"},
           "effectiveDateTime": "2020-03-01", "code": {"text": "MRD"},
           "performer": [{"display": "Dr. Ana Ramos"}], "note": [{"text": "called the mother"}],
           "text": {"status": "generated", "div": "<div>Ana</div>"},
           "identifier": [{"system": "https://w3id.org/pedall-fhir/sid/hito/accession", "value": "BX-1"}],
           "contained": [{"resourceType": "Specimen", "id": "s", "identifier": [{"value": "S-9"}],
                          "collection": {"collector": {"display": "Nurse Eva"}}, "type": {"text": "Bone marrow"}}]}
    out = deidentify(obs, "k", shift_days=10)
    assert set(out) == {"resourceType", "id", "status", "subject", "effectiveDateTime", "code", "contained"}
    assert out["contained"] == [{"resourceType": "Specimen", "id": "s", "type": {"text": "Bone marrow"}}]
    shift = (date.fromisoformat(out["effectiveDateTime"]) - date(2020, 3, 1)).days
    assert shift == date_shift("k", "p1", 10) and 1 <= abs(shift) <= 10
    assert deidentify({**obs, "effectiveDateTime": "2020-03"}, "k", shift_days=10)["effectiveDateTime"] in ("2020-02", "2020-03")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_workers_sharing_a_database_run_each_job_once(backend: str, tmp_path: Path, settings: Settings) -> None:
    """Three workers (threads, each with its own connections) on one database and six queued jobs:
    every job is claimed by exactly one worker (compare-and-set), runs once and completes."""
    import threading

    with _store_on(backend, tmp_path) as store:
        for site, mapping, path in EXAMPLE_FILES[:1]:
            assert ingest_file(path, site, mapping, store, settings=settings).stored
        s = settings.model_copy(update={"export_dir": tmp_path / "files"})
        jobs = ExportJobs(store)
        for i in range(6):
            assert jobs.create(f"job-{i}", "http://x/$export", {"request": {"level": "system"}, "base": "http://x"}, 10)
        ran: list[str] = []
        lock = threading.Lock()

        def work() -> None:
            mine = ExportJobs(store)
            while (job := mine.claim(s.export_stale_seconds)) is not None:
                with lock:
                    ran.append(job.id)
                run_job(store, s, mine, job)

        threads = [threading.Thread(target=work) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(ran) == [f"job-{i}" for i in range(6)]
        done = [jobs.get(f"job-{i}") for i in range(6)]
        assert all(j.status == "completed" and j.attempts == 1 for j in done)
        assert len({j.manifest["output"][0]["count"] for j in done}) == 1
