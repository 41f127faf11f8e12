"""Bad input never loses good rows and never answers 5xx (issue 17, defects 12-18), over a real
server and client on SQLite and PostgreSQL: values longer than any column or holding a NUL,
identifiers in other Unicode forms, spreadsheet error cells, duplicate headers, blank lines in
HL7 v2, out-of-range parameters, and resources or Bundle entries the R4 rules refuse."""

from __future__ import annotations

import copy
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest

from adapter.config import ROOT, Settings
from tests.conftest import EXAMPLES, _store_on
from tests.server import Server

ERM = EXAMPLES / "hito" / "hito_erm_citometria.csv"
WORKBOOK = EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx"
PATIENT_SYSTEM = "https://w3id.org/pedall-fhir/sid/hito/patient"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    with _store_on(request.param, tmp_path_factory.mktemp("bad")) as store:
        server = Server(store, settings.model_copy(update={"max_upload_bytes": 2_000_000}))
        try:
            r = _post(server.client, WORKBOOK.read_bytes(), WORKBOOK.name, "seguimiento")
            assert r.status_code == 200, r.text
            yield server
        finally:
            server.stop()


def _post(c: httpx.Client, content: bytes, name: str, mapping: str, site: str = "hito") -> httpx.Response:
    return c.post("/$ingest", files={"file": (name, content)}, data={"site": site, "mapping": mapping})


def _report(r: httpx.Response) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(summary, issues) of an ingestion's batch-response Bundle."""
    issues = r.json()["entry"][-1]["response"]["outcome"]["issue"]
    return json.loads(issues[0]["diagnostics"]), issues[1:]


def _erm_lines() -> list[str]:
    return ERM.read_bytes().decode("cp1252").split("\r\n") if b"\r\n" in ERM.read_bytes() else \
        ERM.read_bytes().decode("cp1252").split("\n")


def _erm(lines: list[str]) -> bytes:
    return "\r\n".join(lines).encode("cp1252", errors="strict")


def _patient_id(srv: Server, record: str) -> str:
    found = srv.client.get("/Patient", params={"identifier": f"{PATIENT_SYSTEM}|{record}"}).json()
    assert found["total"] == 1, found
    return found["entry"][0]["resource"]["id"]


# ------------------------------------------------------------------------ 12. long values, NUL


def test_long_values_are_stored_and_a_nul_is_one_row_issue(srv: Server) -> None:
    lines = _erm_lines()
    long_record, long_folio = "R" + "7" * 299, "F" + "9" * 299
    cells = lines[1].split(";")
    cells[0], cells[1] = long_folio, long_record  # a 300-character lab folio and record number
    nul = lines[2].split(";")
    nul[9] = "0,0\x001"  # a NUL inside the MRD result
    body = _erm([lines[0], ";".join(cells), ";".join(nul), *lines[3:]])
    r = _post(srv.client, body.replace(b"\x00", b"\x00"), "erm_long.csv", "erm_citometria")
    assert r.status_code == 200, r.text[:500]
    summary, issues = _report(r)
    assert summary["rowsRejected"] == 1 and summary["rowsMapped"] == summary["rowsRead"] - 1
    bad = [i for i in issues if i["severity"] == "error"]
    assert len(bad) == 1 and "row=3" in bad[0]["diagnostics"] and "column=Resultado" in bad[0]["diagnostics"]
    assert "control character" in bad[0]["diagnostics"] and "\\x00" in bad[0]["diagnostics"]
    # the long values are stored whole and found by exact search (the index holds their hash)
    obs = srv.client.get("/Observation", params={"identifier": long_folio}).json()
    assert obs["total"] == 1 and obs["entry"][0]["resource"]["identifier"][0]["value"] == long_folio


def test_rest_takes_long_valid_values_and_refuses_a_nul_or_a_bad_reference_with_400(srv: Server) -> None:
    patient = json.loads((ROOT / "profiles" / "examples" / "pedall-patient-1.json").read_text())
    patient.pop("id")
    long_system = "https://hospital.example/" + "s" * 280
    patient["identifier"] = [{"system": long_system, "value": "v" * 300}]
    r = srv.client.post("/Patient", json=patient)
    assert r.status_code == 201, r.text[:300]
    found = srv.client.get("/Patient", params={"identifier": f"{long_system}|{'v' * 300}"}).json()
    assert found["total"] == 1
    r = srv.client.post("/Patient", json={**patient, "identifier": [{"system": "https://x.example", "value": "a\x00b"}]})
    assert r.status_code == 400 and "Patient.identifier[0].value" in r.json()["issue"][0]["diagnostics"]
    obs = json.loads((ROOT / "profiles" / "examples" / "pedall-mrd-1.json").read_text())
    obs.pop("id")
    obs["subject"] = {"reference": "Patient/" + "p" * 100}  # not a FHIR id: no Patient can have it
    r = srv.client.post("/Observation", json=obs)
    assert r.status_code in (400, 422) and "Observation.subject" in r.text, r.text[:300]
    assert srv.client.get("/Observation", params={"_id": "\x00"}).status_code == 400


# ---------------------------------------------------------------- 13. one identifier, one Patient


@pytest.mark.parametrize("spelling", ["０１４２４０", "0142\u200b40", "\ufeff014240", "014240\u2060"])
def test_an_identifier_in_another_unicode_form_names_the_same_patient(srv: Server, spelling: str) -> None:
    """Full-width digits, a zero-width space, a byte-order mark, a word joiner: the same record."""
    pid = _patient_id(srv, "014240")
    def clinical() -> dict[str, int]:  # (a Provenance may record the site Group following a REST-created Patient)
        return {t: n for t, n in srv.store.counts(site="hito").items() if t != "Provenance"}

    before = clinical()
    wb = openpyxl.load_workbook(WORKBOOK)
    ws = wb["Infusiones"]
    assert ws.cell(row=2, column=1).value == "014240"
    ws.cell(row=2, column=1).value = spelling  # cycle 1 of patient 014240, typed another way
    buf = io.BytesIO()
    wb.save(buf)
    r = _post(srv.client, buf.getvalue(), "seguimiento_unicode.xlsx", "seguimiento")
    assert r.status_code == 200, r.text[:300]
    summary, issues = _report(r)
    assert summary["unlinkedPatients"] == 0 and summary["rowsRejected"] == 0
    assert clinical() == before  # no new Patient, no new infusion: the same records
    notes = [i for i in issues if "read as '014240'" in i["diagnostics"]]
    assert len(notes) == 1 and "sheet=Infusiones; row=2; column=Expediente" in notes[0]["diagnostics"]
    assert notes[0]["severity"] == "information" or notes[0]["severity"] == "warning"
    # the REST paths normalise the same way: search and conditional create find the one Patient
    assert srv.client.get("/Patient", params={"identifier": f"{PATIENT_SYSTEM}|{spelling}"}).json()["total"] == 1
    patient = srv.client.get(f"/Patient/{pid}").json()
    twin = {k: v for k, v in patient.items() if k not in ("id", "meta")}
    twin["meta"] = {"profile": patient["meta"]["profile"]}
    from urllib.parse import quote

    r = srv.client.post("/Patient", json=twin, headers={"If-None-Exist": f"identifier={PATIENT_SYSTEM}|{quote(spelling)}"})
    assert r.status_code == 200 and r.json()["id"] == pid


def test_composed_and_decomposed_accents_are_one_record(srv: Server) -> None:
    wb = openpyxl.load_workbook(WORKBOOK)
    pacientes, infusiones = wb["Pacientes"], wb["Infusiones"]
    new = [c.value for c in pacientes[2]]
    new[0] = "\u00d1U-001"  # Ñ composed (NFC)
    pacientes.append(new)
    cycle = [c.value for c in infusiones[2]]
    cycle[0] = "N\u0303U-001"  # the same letter decomposed (NFD): N + combining tilde
    infusiones.append(cycle)
    buf = io.BytesIO()
    wb.save(buf)
    r = _post(srv.client, buf.getvalue(), "seguimiento_nfd.xlsx", "seguimiento")
    assert r.status_code == 200, r.text[:300]
    summary, _ = _report(r)
    assert summary["unlinkedPatients"] == 0
    pid = _patient_id(srv, "\u00d1U-001")
    assert srv.client.get("/Patient", params={"identifier": f"{PATIENT_SYSTEM}|N\u0303U-001"}).json()["total"] == 1
    given = srv.client.get("/MedicationAdministration", params={"subject": f"Patient/{pid}"}).json()
    assert given["total"] >= 1  # the infusion of the decomposed spelling is the composed one's patient's


# ------------------------------------------------------------------- 14. spreadsheet error cells


def test_spreadsheet_error_cells_are_row_issues_not_record_numbers(srv: Server) -> None:
    wb = openpyxl.load_workbook(WORKBOOK)
    ws = wb["Pacientes"]
    ws.cell(row=3, column=1).value = "#N/A"  # a lookup formula that found nothing
    ws.cell(row=4, column=4).value = "#REF!"  # Sexo
    assert ws.cell(row=3, column=1).data_type == "e"
    buf = io.BytesIO()
    wb.save(buf)
    r = _post(srv.client, buf.getvalue(), "seguimiento_errors.xlsx", "seguimiento")
    assert r.status_code == 200, r.text[:300]
    summary, issues = _report(r)
    errors = [i["diagnostics"] for i in issues if i["severity"] == "error"]
    assert any("sheet=Pacientes; row=3; column=Expediente; value='#N/A'" in d and "spreadsheet error" in d for d in errors)
    assert any("sheet=Pacientes; row=4; column=Sexo; value='#REF!'" in d for d in errors)
    assert srv.client.get("/Patient", params={"identifier": f"{PATIENT_SYSTEM}|#N/A"}).json()["total"] == 0
    csv_lines = _erm_lines()
    cells = csv_lines[1].split(";")
    cells[1] = "#REF!"  # a spreadsheet saved as CSV keeps the error's text
    r = _post(srv.client, _erm([csv_lines[0], ";".join(cells)]), "erm_ref.csv", "erm_citometria")
    summary, issues = _report(r)
    assert summary["rowsRejected"] == 1 and "column=Expediente; value='#REF!'" in issues[0]["diagnostics"]


# ------------------------------------------------------------------------ 15. duplicate headers


def test_a_csv_with_a_duplicate_header_is_refused_naming_the_column(srv: Server, tmp_path: Path) -> None:
    lines = _erm_lines()
    header = lines[0].split(";")
    header[12] = "Resultado"  # "Comentario" renamed: two columns now claim to be the result
    body = _erm([";".join(header), *lines[1:]])
    r = _post(srv.client, body, "erm_dup.csv", "erm_citometria")
    assert r.status_code == 422 and "'Resultado' twice (columns 10 and 13)" in r.text, r.text[:300]
    path = tmp_path / "erm_dup.csv"
    path.write_bytes(body)
    env_url = srv.store.engine.url.render_as_string(hide_password=False)
    cli = subprocess.run([str(Path(sys.executable).parent / "adapter"), "ingest", str(path), "--site", "hito",  # noqa: S603
                          "--mapping", "erm_citometria"], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "ADAPTER_DATABASE_URL": env_url,
                              "ADAPTER_AUDIT_SPOOL_DIR": str(tmp_path / "spool")})
    assert cli.returncode == 3 and "twice" in cli.stderr and "Traceback" not in cli.stderr


# ------------------------------------------------------------------ 16. blank lines in HL7 v2


def test_blank_lines_between_hl7_segments_are_skipped(srv: Server) -> None:
    feed = EXAMPLES / "mx_multicentro" / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7"
    raw = feed.read_bytes()
    clean = _post(srv.client, raw, feed.name, "lab_erm", site="cdmx-b")
    assert clean.status_code == 200
    spaced = raw.replace(b"\rOBX", b"\r\n\r\nOBX").replace(b"\nOBX", b"\n\nOBX").replace(b"\rPID", b"\r\r\nPID")
    assert spaced != raw
    r = _post(srv.client, spaced, "spaced_" + feed.name, "lab_erm", site="cdmx-b")
    assert r.status_code == 200, r.text[:300]
    (a, _), (b, _) = _report(clean), _report(r)
    assert (b["rowsRead"], b["rowsMapped"], b["rowsRejected"]) == (a["rowsRead"], a["rowsMapped"], a["rowsRejected"])
    assert all(v.get("unchanged", 0) and not v.get("created") for v in b["resources"].values())  # the same results


# --------------------------------------------------------------- 17. out-of-range parameters: 400


@pytest.mark.parametrize(("method", "url", "kwargs", "needle"), [
    ("GET", "/Observation?value-quantity=1e999999999999", {}, "value-quantity"),
    ("POST", "/Observation/_search", {"content": b"value-quantity=1e999999999999",
                                      "headers": {"content-type": "application/x-www-form-urlencoded"}}, "value-quantity"),
    ("GET", "/Observation?value-quantity=1e-999999999999", {}, "value-quantity"),
    ("GET", "/Observation?_offset=9223372036854775808", {}, "_offset"),
    ("GET", "/Observation/x/_history/99999999999999999999999", {}, "version"),
    ("GET", "/$export?_typeFilter=Observation%3Fvalue-quantity%3D1e999999999999", {"headers": {"Prefer": "respond-async"}},
     "value-quantity"),
    ("POST", "/Patient/$validate", {"json": {"resourceType": "Parameters", "parameter": {"name": "resource"}}}, "parameter"),
    ("POST", "/Patient/$validate", {"json": {"resourceType": "Parameters", "parameter": [1, 2]}}, "parameter"),
    ("GET", "/AuditEvent?_offset=99999999999999999999", {}, "_offset"),
])
def test_out_of_range_parameters_get_400_naming_them(srv: Server, method: str, url: str, kwargs: dict[str, Any],
                                                       needle: str) -> None:
    r = srv.client.request(method, url, **kwargs)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert r.json()["resourceType"] == "OperationOutcome" and needle in r.json()["issue"][0]["diagnostics"]


def test_conditional_writes_with_an_out_of_range_quantity_get_400(srv: Server) -> None:
    obs = json.loads((ROOT / "profiles" / "examples" / "pedall-mrd-1.json").read_text())
    obs.pop("id")
    r = srv.client.post("/Observation", json=obs, headers={"If-None-Exist": "value-quantity=1e999999999999"})
    assert r.status_code == 400 and "value-quantity" in r.text
    r = srv.client.put("/Observation?value-quantity=1e999999999999", json=obs)
    assert r.status_code == 400 and "value-quantity" in r.text


@pytest.mark.parametrize("name", [".", "..", "x" * 256 + ".csv", "é" * 130 + ".csv"])
def test_upload_file_names_that_are_not_plain_names_get_400(srv: Server, name: str) -> None:
    r = _post(srv.client, ERM.read_bytes(), name, "erm_citometria")
    assert r.status_code == 400 and "file" in r.json()["issue"][0]["diagnostics"], r.text[:300]


# ------------------------------------------------- 18. contained resources and Bundle entries


def test_nested_or_unreferenced_contained_resources_are_refused(srv: Server) -> None:
    obs = json.loads((ROOT / "profiles" / "examples" / "pedall-mrd-1.json").read_text())
    obs.pop("id")
    spec = {"resourceType": "Specimen", "id": "s1", "type": {"text": "bone marrow"}}
    nested = copy.deepcopy(obs)
    nested["contained"] = [{**spec, "contained": [{"resourceType": "Specimen", "id": "s2"}]}]
    nested["specimen"] = {"reference": "#s1"}
    unreferenced = {**copy.deepcopy(obs), "contained": [spec]}
    unreferenced.pop("specimen", None)
    for body, rule in ((nested, "dom-2"), (unreferenced, "dom-3")):
        r = srv.client.post("/Observation", json=body)
        assert r.status_code == 422 and rule in r.text, r.text[:400]
        v = srv.client.post("/Observation/$validate", json=body)
        assert v.status_code == 422 and rule in v.text
    fine = {**copy.deepcopy(obs), "contained": [spec], "specimen": {"reference": "#s1"}}
    assert srv.client.post("/Observation/$validate", json=fine).status_code in (200, 422)
    assert "dom-" not in srv.client.post("/Observation/$validate", json=fine).text


@pytest.mark.parametrize(("request_", "needle"), [
    ({"method": "PUT", "url": "Organization/x", "ifMatch": 1}, "ifMatch"),
    ({"method": "DELETE", "url": "Foo/1"}, "Foo"),
    ({"method": "POST", "url": "Organization?name=x"}, "POST"),
])
def test_transaction_entries_the_rules_refuse(srv: Server, request_: dict[str, Any], needle: str) -> None:
    org = json.loads((ROOT / "profiles" / "examples" / "pedall-organization-1.json").read_text())
    org["id"] = "x"
    entry: dict[str, Any] = {"request": request_}
    if request_["method"] in ("PUT", "POST"):
        entry["resource"] = org
    r = srv.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]})
    assert r.status_code == 400, r.text[:300]
    assert needle in r.json()["issue"][0]["diagnostics"]
