"""Independent FHIR client libraries against the real server: fhirpy (CRUD, search, paging,
count(), _elements, _summary) and the SMART Python client fhirclient (CRUD, search, paging,
transaction, $everything)."""

from __future__ import annotations

import json
from pathlib import Path

from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import ResourceNotFound

from tests.server import Server

EXAMPLES = Path(__file__).resolve().parent.parent / "profiles" / "examples"


def test_fhirpy_crud_search_and_paging(api: Server) -> None:
    client = SyncFHIRClient(api.base, extra_headers={"Accept": "application/fhir+json"})
    # search + paging: fetch_all follows the server's next links
    stored = sorted(r["id"] for r in api.store.iter_resources("Observation")
                    if r["code"]["coding"][0]["code"] == "mrd")
    got = client.resources("Observation").search(code="mrd").limit(4).fetch_all()
    assert sorted(r.id for r in got) == stored
    hito = client.resources("Patient").search(organization="Organization/hito").fetch_all()
    assert len(hito) == 9
    first = client.resources("Observation").search(code="mrd", patient=hito[0].id).sort("date").fetch()
    dates = [r.effectiveDateTime for r in first]
    assert dates == sorted(dates) and dates
    # CRUD
    data = json.loads((EXAMPLES / "pedall-patient-1.json").read_text())
    data.pop("id")
    data["identifier"][0]["value"] = "fhirpy-1"
    patient = client.resource("Patient", **data)
    patient.save()
    assert patient.id and patient.meta.versionId == "1"
    read = client.reference("Patient", patient.id).to_resource()
    assert read.gender == data["gender"]
    patient["gender"] = "other"
    patient.save()
    assert client.reference("Patient", patient.id).to_resource().gender == "other"
    assert client.resources("Patient").search(identifier="fhirpy-1").fetch()[0].id == patient.id
    patient.delete()
    try:
        client.reference("Patient", patient.id).to_resource()
        raise AssertionError("a deleted Patient was still readable")
    except ResourceNotFound:
        pass


def test_fhirpy_count_elements_and_summary(api: Server) -> None:
    """fhirpy's ``count()`` (``_count=0&_totalMethod=count``), ``elements()`` and
    ``_summary`` searches give what the server's own search says."""
    client = SyncFHIRClient(api.base, extra_headers={"Accept": "application/fhir+json"})
    stored = [r for r in api.store.iter_resources("Observation") if r["code"]["coding"][0]["code"] == "mrd"]
    assert client.resources("Observation").search(code="mrd").count() == len(stored) > 0
    slim = client.resources("Observation").search(code="mrd").elements("subject").limit(5).fetch()
    assert slim and all(set(r.keys()) == {"resourceType", "id", "meta", "subject", "status", "code"} for r in slim)
    assert all(any(t["code"] == "SUBSETTED" for t in r["meta"]["tag"]) for r in slim)
    summary = client.resources("Observation").search(code="mrd", _summary="true").limit(5).fetch()
    assert summary and all("note" not in r and "valueQuantity" in r for r in summary)


def test_fhirclient_crud_search_paging_transaction_and_everything(api: Server) -> None:
    """The SMART Python client (fhirclient 4.x, R4 models): its model classes parse what the
    server returns, page to the end of a search, create/update/delete, post a transaction and
    read ``$everything``."""
    from fhirclient import client as smart_client
    from fhirclient.models.bundle import Bundle
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    smart = smart_client.FHIRClient(settings={"app_id": "pedall-tests", "api_base": api.base + "/"})
    assert smart.server.capabilityStatement.fhirVersion == "4.0.1"
    stored = sorted(r["id"] for r in api.store.iter_resources("Observation") if r["code"]["coding"][0]["code"] == "mrd")
    search = Observation.where(struct={"code": "mrd", "_count": "7"})
    got = sorted(o.id for o in search.perform_resources_iter(smart.server))
    assert got == stored
    # CRUD with the client's model classes
    data = json.loads((EXAMPLES / "pedall-patient-1.json").read_text())
    data.pop("id")
    data["identifier"][0]["value"] = "fhirclient-1"
    created = Patient(data).create(smart.server)
    pid = created["id"]
    patient = Patient.read(pid, smart.server)
    assert patient.gender == data["gender"] and patient.meta.versionId == "1"
    patient.gender = "other"
    patient.update(smart.server)
    assert Patient.read(pid, smart.server).gender == "other"
    # a transaction that creates an Observation for it, by a conditional reference, then $everything
    obs = json.loads((EXAMPLES / "pedall-mrd-1.json").read_text())
    obs.pop("id")
    obs.pop("partOf", None)
    obs["subject"] = {"reference": f"Patient?identifier={data['identifier'][0]['system']}|fhirclient-1"}
    tx = Bundle({"resourceType": "Bundle", "type": "transaction",
                 "entry": [{"resource": obs, "request": {"method": "POST", "url": "Observation"}}]})
    answer = Bundle(smart.server.post_json("", tx.as_json()).json())
    assert answer.type == "transaction-response" and answer.entry[0].response.status.startswith("201")
    everything = Bundle(smart.server.request_json(f"Patient/{pid}/$everything"))
    types = sorted(e.resource.resource_type for e in everything.entry)
    assert types == ["Observation", "Patient"], types
    result = next(e.resource for e in everything.entry if e.resource.resource_type == "Observation")
    assert result.subject.reference == f"Patient/{pid}"  # the conditional reference, resolved
    Patient.read(pid, smart.server).delete(smart.server)
    for e in everything.entry:
        if e.resource.resource_type == "Observation":
            Observation.read(e.resource.id, smart.server).delete(smart.server)
    try:
        Patient.read(pid, smart.server)
        raise AssertionError("a deleted Patient was still readable")
    except Exception as exc:  # fhirclient raises requests' HTTPError for a 410
        assert "410" in str(exc), exc


def test_fhir_kit_client_javascript(api: Server) -> None:
    """A second independent client, in another language: fhir-kit-client 2.0.3 (Node.js, pinned in
    tests/js_client/package-lock.json, installed by `make test`) runs tests/js_client/check.mjs:
    capabilities, search paged to the end with nextPage(), create/read/update/delete, a
    transaction with a conditional reference, $everything by operation() (a POST) and history."""
    import shutil
    import subprocess

    folder = Path(__file__).resolve().parent / "js_client"
    assert shutil.which("node"), "Node.js is needed (the README's machine has it)"
    assert (folder / "node_modules" / "fhir-kit-client").is_dir(), "run `make test` (npm ci in tests/js_client)"
    expected = sum(1 for r in api.store.iter_resources("Observation") if r["code"]["coding"][0]["code"] == "mrd")
    done = subprocess.run(["node", str(folder / "check.mjs"), api.base, str(EXAMPLES / "pedall-patient-1.json"),
                           str(EXAMPLES / "pedall-mrd-1.json"), str(expected)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["ok"] and seen["fhirVersion"] == "4.0.1" and seen["mrdCount"] == expected and seen["pages"] > 1
    assert seen["everything"] == ["Observation", "Patient"] and seen["history"] == 2
