"""An independent FHIR client library (fhirpy) against the real server: CRUD, search and paging."""

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
