"""The FHIR REST service, run by a real uvicorn server and driven over HTTP by httpx, on SQLite and
PostgreSQL: posting each example export, every search parameter, paging, _include/_revinclude,
history, ETag conflicts, transactions, concurrent conditional creates, and bad input."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import EXAMPLE_FILES
from tests.server import Server, _post_export

SD = "https://w3id.org/pedall-fhir/StructureDefinition/"
CS = "https://w3id.org/pedall-fhir/CodeSystem/"
FHIR = "application/fhir+json"


def _search(api: Server, rtype: str, params: Any) -> dict[str, Any]:
    r = api.client.get(f"/{rtype}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(FHIR)
    return r.json()


def _all(api: Server, rtype: str, params: Any) -> list[dict[str, Any]]:
    """Every match, following next links."""
    bundle = _search(api, rtype, params)
    out = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    while nxt := next((ln["url"] for ln in bundle["link"] if ln["relation"] == "next"), None):
        bundle = api.client.get(nxt).json()
        out += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    return out


def _stored(api: Server, rtype: str, profile: str | None = None) -> list[dict[str, Any]]:
    return [r for r in api.store.iter_resources(rtype) if profile is None or SD + profile in r["meta"]["profile"]]


# ------------------------------------------------------------------------------------ ingest + read

def test_ingest_report_and_repost_changes_nothing(api: Server) -> None:
    site, mapping, path = EXAMPLE_FILES[1]
    before = api.store.version_total()
    r = _post_export(api.client, path, site, mapping)
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "batch-response"
    *per_resource, last = bundle["entry"]
    assert {e["response"]["outcome"]["issue"][0]["diagnostics"] for e in per_resource} == {"unchanged"}
    assert len(per_resource) == 26 + 1  # 26 MRD results and the site Organization
    assert last["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert '"rowsRead": 26' in last["response"]["outcome"]["issue"][0]["diagnostics"]
    assert api.store.version_total() == before


def test_read_vread_history_etag(api: Server) -> None:
    obs = _stored(api, "Observation", "pedall-mrd")[0]
    r = api.client.get(f"/Observation/{obs['id']}")
    assert r.status_code == 200 and r.json() == obs
    assert r.headers["etag"] == f'W/"{obs["meta"]["versionId"]}"'
    assert r.headers["last-modified"].endswith("GMT")
    assert api.client.get(f"/Observation/{obs['id']}/_history/1").json()["id"] == obs["id"]
    hist = api.client.get(f"/Observation/{obs['id']}/_history").json()
    assert hist["type"] == "history" and hist["total"] == int(obs["meta"]["versionId"])
    missing = api.client.get("/Observation/does-not-exist")
    assert missing.status_code == 404 and missing.json()["issue"][0]["code"] == "not-found"
    assert api.client.get(f"/Observation/{obs['id']}/_history/99").status_code == 404


# ------------------------------------------------------------------------------------------ search

def test_search_parameters(api: Server) -> None:
    mrd = _stored(api, "Observation", "pedall-mrd")
    patients = _stored(api, "Patient")
    p0 = patients[0]
    # _id
    assert [r["id"] for r in _all(api, "Observation", {"_id": mrd[0]["id"]})] == [mrd[0]["id"]]
    # identifier (system|value and value only)
    ident = p0["identifier"][0]
    assert [r["id"] for r in _all(api, "Patient", {"identifier": f"{ident['system']}|{ident['value']}"})] == [p0["id"]]
    assert p0["id"] in [r["id"] for r in _all(api, "Patient", {"identifier": ident["value"]})]
    # patient / subject, code with and without system
    mine = sorted(o["id"] for o in mrd if o["subject"]["reference"] == f"Patient/{p0['id']}")
    got = _all(api, "Observation", {"patient": p0["id"], "code": f"{CS}observation-code|mrd"})
    assert sorted(r["id"] for r in got) == mine
    assert sorted(r["id"] for r in _all(api, "Observation", {"subject": f"Patient/{p0['id']}", "code": "mrd"})) == mine
    assert _search(api, "Observation", {"code": "http://wrong.example|mrd", "_summary": "count"})["total"] == 0
    # code across all MRD results = the stored count
    assert _search(api, "Observation", {"code": "mrd", "_summary": "count"})["total"] == len(mrd)
    # date with prefixes: compare with the stored effectiveDateTime
    in_2019 = [o for o in mrd if "2019-06-01" <= o["effectiveDateTime"] < "2020-01-01"]
    got = _all(api, "Observation", {"code": "mrd", "date": ["ge2019-06-01", "lt2020-01-01"]})
    assert sorted(r["id"] for r in got) == sorted(o["id"] for o in in_2019) and in_2019
    assert _search(api, "Observation", {"code": "mrd", "date": "2019", "_summary": "count"})["total"] == sum(
        o["effectiveDateTime"].startswith("2019") for o in mrd)
    # status
    assert _search(api, "Observation", {"code": "mrd", "status": "final", "_summary": "count"})["total"] == sum(
        o["status"] == "final" for o in mrd)
    # MRD profile parameters: value-quantity (percent) and interpretation
    above = [o for o in mrd if o["valueQuantity"]["value"] > 1]
    got = _all(api, "Observation", {"value-quantity": "gt1"})
    assert sorted(r["id"] for r in got) == sorted(o["id"] for o in above) and above
    exactly = [o for o in mrd if o["valueQuantity"]["value"] == 0.21]
    got = _all(api, "Observation", {"value-quantity": "0.21|http://unitsofmeasure.org|%"})
    assert sorted(r["id"] for r in got) == sorted(o["id"] for o in exactly) and exactly
    neg = Counter(o["interpretation"][0]["coding"][0]["code"] for o in mrd)
    for code, n in neg.items():
        assert _search(api, "Observation", {"interpretation": code, "_summary": "count"})["total"] == n
    # _lastUpdated
    assert _search(api, "Patient", {"_lastUpdated": "ge2000-01-01", "_summary": "count"})["total"] == len(patients)
    assert _search(api, "Patient", {"_lastUpdated": "lt2000-01-01", "_summary": "count"})["total"] == 0


def test_sort_and_paging(api: Server) -> None:
    mrd = _stored(api, "Observation", "pedall-mrd")
    got = _all(api, "Observation", {"code": "mrd", "_sort": "-date", "_count": 7})
    assert len(got) == len(mrd) and len({r["id"] for r in got}) == len(mrd)
    dates = [r["effectiveDateTime"] for r in got]
    assert dates == sorted(dates, reverse=True)
    first = _search(api, "Observation", {"code": "mrd", "_count": 5})
    assert first["total"] == len(mrd) and len(first["entry"]) == 5
    nxt = next(ln["url"] for ln in first["link"] if ln["relation"] == "next")
    second = api.client.get(nxt).json()
    prev = next(ln["url"] for ln in second["link"] if ln["relation"] == "previous")
    assert [e["resource"]["id"] for e in api.client.get(prev).json()["entry"]] == [e["resource"]["id"] for e in first["entry"]]


def test_paging_is_stable_while_new_data_arrives(api: Server) -> None:
    before = _search(api, "Patient", {"_count": 3})
    ids = [e["resource"]["id"] for e in before["entry"]]
    new = dict(_stored(api, "Patient")[0])
    new.pop("meta")
    new["meta"] = {"profile": [SD + "pedall-patient"]}
    new["identifier"] = [{"system": new["identifier"][0]["system"], "value": "paging-test"}]
    created = api.client.post("/Patient", json=new, headers={"content-type": FHIR})
    assert created.status_code == 201, created.text
    bundle = before
    while nxt := next((ln["url"] for ln in bundle["link"] if ln["relation"] == "next"), None):
        bundle = api.client.get(nxt).json()
        assert bundle["total"] == before["total"]
        ids += [e["resource"]["id"] for e in bundle["entry"]]
    assert len(ids) == len(set(ids)) == before["total"]
    assert created.json()["id"] not in ids
    assert _search(api, "Patient", {"_summary": "count"})["total"] == before["total"] + 1
    api.client.delete(f"/Patient/{created.json()['id']}")


def test_include_and_revinclude(api: Server) -> None:
    mrd = _stored(api, "Observation", "pedall-mrd")
    o = mrd[0]
    b = _search(api, "Observation", {"_id": o["id"], "_include": ["Observation:patient", "Observation:part-of"]})
    included = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in b["entry"] if e["search"]["mode"] == "include"}
    expected = {tuple(o["subject"]["reference"].split("/"))} | {tuple(p["reference"].split("/")) for p in o.get("partOf", [])}
    assert included == expected
    pid = o["subject"]["reference"].split("/")[1]
    b = _search(api, "Patient", {"_id": pid, "_revinclude": "Observation:patient"})
    rev = {e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "include"}
    assert rev == {r["id"] for r in _stored(api, "Observation") if r["subject"]["reference"] == f"Patient/{pid}"}
    b = _search(api, "Patient", {"_id": pid, "_revinclude": "Provenance:target"})
    assert any(e["resource"]["resourceType"] == "Provenance" for e in b["entry"])


def test_everything(api: Server) -> None:
    p = _stored(api, "Patient")[0]
    b = api.client.get(f"/Patient/{p['id']}/$everything").json()
    types = Counter(e["resource"]["resourceType"] for e in b["entry"])
    assert types["Patient"] == 1 and types["Organization"] == 1
    # the compartment: subject (clinical resources) or individual (the study enrolment, ResearchSubject)
    mine = [r for r in api.store.iter_resources()
            if (r.get("subject") or r.get("individual") or {}).get("reference") == f"Patient/{p['id']}"]
    assert types["ResearchSubject"] == 1
    assert sum(types.values()) == len(mine) + 2


def test_pretty_is_accepted_on_search(api: Server) -> None:
    """_pretty (R4 §3.1.0.1.8, a general parameter) is taken on search as on read; a value other
    than true or false is a 400."""
    plain = _search(api, "Observation", {"_count": 3})
    pretty = api.client.get("/Observation", params={"_count": 3, "_pretty": "true"})
    assert pretty.status_code == 200 and [e["fullUrl"] for e in pretty.json()["entry"]] == [e["fullUrl"] for e in plain["entry"]]
    assert api.client.get("/Observation", params={"_pretty": "yes"}).status_code == 400


def test_xml_is_not_acceptable_and_a_body_must_be_json(api: Server) -> None:
    """R4 §3.1.0.1.10: this server speaks JSON only. XML asked for by _format or by an Accept that
    lists XML only is a 406; a POST or PUT whose body is not JSON (text/plain, or no Content-Type)
    is a 415; both OperationOutcomes. JSON among the accepted types, a form for POST _search and an
    empty POST are served as before."""
    p = _stored(api, "Patient")[0]
    for params, headers in (({"_format": "xml"}, {}), ({"_format": "application/fhir+xml"}, {}),
                            ({}, {"Accept": "application/fhir+xml"}), ({}, {"Accept": "application/xml, text/xml"})):
        for url in (f"/Patient/{p['id']}", "/Patient", "/metadata"):
            r = api.client.get(url, params=params, headers=headers)
            assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome", (url, params, headers, r.text)
    ok = api.client.get(f"/Patient/{p['id']}", headers={"Accept": "application/fhir+xml, application/fhir+json;q=0.8"})
    assert ok.status_code == 200 and ok.json()["id"] == p["id"]
    body = json.dumps(p).encode()  # as read: meta.profile kept
    for headers in ({"Content-Type": "text/plain"}, {}):
        r = api.client.put(f"/Patient/{p['id']}", content=body, headers=headers)
        assert r.status_code == 415 and "application/fhir+json" in r.json()["issue"][0]["diagnostics"], r.text
        r = api.client.post("/Patient", content=body, headers=headers)
        assert r.status_code == 415
    assert api.client.put(f"/Patient/{p['id']}", content=body, headers={"Content-Type": "application/fhir+json"}).status_code == 200
    form = api.client.post("/Patient/_search", data={"_id": p["id"]})
    assert form.status_code == 200 and form.json()["total"] == 1
    assert api.client.post(f"/Patient/{p['id']}/$everything").status_code == 200  # no body, no type
    assert api.client.get("/outcomes", headers={"Accept": "text/xml"}).status_code != 406  # not a FHIR route


def test_everything_takes_its_parameters_by_get_and_post(api: Server) -> None:
    """R4 Patient-everything: _type, _count with next links to the end, _since (an instant with its
    offset), start/end (care dates), by GET and by POST with a Parameters body; an unknown
    parameter or a bad value is a 400 OperationOutcome, never silently ignored."""
    p = next(r for r in _stored(api, "Patient") if sum(1 for _ in api.store.compartment(r["id"])) > 6)
    url = f"/Patient/{p['id']}/$everything"
    whole = api.client.get(url).json()
    n = whole["total"]
    assert n == len(whole["entry"]) > 7
    only = api.client.get(url, params={"_type": "Observation,Patient"}).json()
    assert {e["resource"]["resourceType"] for e in only["entry"]} == {"Observation", "Patient"}
    assert only["total"] == sum(e["resource"]["resourceType"] in ("Observation", "Patient") for e in whole["entry"])
    seen, page = [], api.client.get(url, params={"_count": 5}).json()
    while True:  # paging to the end gives every resource once
        assert len(page["entry"]) <= 5 and page["total"] == n
        seen += [e["fullUrl"] for e in page["entry"]]
        nxt = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
        if nxt is None:
            break
        page = api.client.get(nxt).json()
    assert sorted(seen) == sorted(e["fullUrl"] for e in whole["entry"]) and len(seen) == n
    assert api.client.get(url, params={"_since": "2999-01-01T00:00:00+05:30"}).json()["total"] == 0
    assert api.client.get(url, params={"_since": "2000-01-01T00:00:00-06:00"}).json()["total"] == n
    dated = [e["resource"] for e in whole["entry"] if e["resource"].get("effectiveDateTime")]
    first = min(r["effectiveDateTime"][:10] for r in dated)
    early = api.client.get(url, params={"end": first}).json()
    assert all(e["resource"].get("effectiveDateTime", first)[:10] <= first for e in early["entry"])
    assert early["total"] < n
    posted = api.client.post(url, json={"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueCode": "Observation"}, {"name": "_count", "valueInteger": 2}]}).json()
    assert posted["total"] == only["total"] - 1 and len(posted["entry"]) == 2
    for bad in ({"_typo": "x"}, {"_count": "-1"}, {"_since": "2020-01-01"}, {"start": "last year"}):
        r = api.client.get(url, params=bad)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (bad, r.text)
    assert api.client.post(url, content=b"not json", headers={"Content-Type": "application/fhir+json"}).status_code == 400
    assert api.client.get(url, params={"_format": "json", "_pretty": "true"}).json()["total"] == n  # general parameters


# ------------------------------------------------------------------------------------------- writes

def _example(name: str) -> dict[str, Any]:
    import json

    return json.loads((Path(__file__).resolve().parent.parent / "profiles" / "examples" / f"{name}.json").read_text())


def test_update_delete_with_if_match(api: Server) -> None:
    org = _example("pedall-organization-1")
    org["id"] = "etag-test-org"
    r = api.client.put("/Organization/etag-test-org", json=org)
    assert r.status_code == 201 and r.headers["etag"] == 'W/"1"'
    org["name"] = "renamed"
    assert api.client.put("/Organization/etag-test-org", json=org, headers={"If-Match": 'W/"1"'}).status_code == 200
    stale = api.client.put("/Organization/etag-test-org", json={**org, "name": "again"}, headers={"If-Match": 'W/"1"'})
    assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome"
    assert api.client.get("/Organization/etag-test-org").json()["name"] == "renamed"
    assert api.client.delete("/Organization/etag-test-org", headers={"If-Match": 'W/"1"'}).status_code == 412
    assert api.client.delete("/Organization/etag-test-org", headers={"If-Match": 'W/"2"'}).status_code == 200
    gone = api.client.get("/Organization/etag-test-org")
    assert gone.status_code == 410 and gone.json()["issue"][0]["code"] == "deleted"
    hist = api.client.get("/Organization/etag-test-org/_history").json()
    assert [e["request"]["method"] for e in hist["entry"]] == ["DELETE", "PUT", "POST"]
    assert "resource" not in hist["entry"][0]


def test_transaction_is_atomic_and_resolves_urn_uuid(api: Server) -> None:
    org = _example("pedall-organization-1")
    org.pop("id", None)
    patient = _example("pedall-patient-1")
    patient.pop("id", None)
    patient["identifier"][0]["value"] = "tx-1"
    patient["managingOrganization"] = {"reference": "urn:uuid:0b4f1c51-0000-4000-8000-000000000001"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b4f1c51-0000-4000-8000-000000000001", "resource": org,
         "request": {"method": "POST", "url": "Organization"}},
        {"fullUrl": "urn:uuid:0b4f1c51-0000-4000-8000-000000000002", "resource": patient,
         "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.client.post("/", json=bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    org_id = out["entry"][0]["resource"]["id"]
    assert out["entry"][1]["resource"]["managingOrganization"]["reference"] == f"Organization/{org_id}"
    # one invalid entry fails the whole transaction: nothing of it is stored
    count = _search(api, "Patient", {"_summary": "count"})["total"]
    bad = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**patient, "identifier": [{"system": patient["identifier"][0]["system"], "value": "tx-2"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {**patient, "gender": "not-a-gender"}, "request": {"method": "POST", "url": "Patient"}},
    ]}
    r = api.client.post("/", json=bad)
    assert r.status_code == 422 and "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert _search(api, "Patient", {"_summary": "count"})["total"] == count
    # a batch runs each entry on its own
    batch = {**bad, "type": "batch"}
    out = api.client.post("/", json=batch).json()
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "422"]


def test_a_transaction_writing_one_resource_twice_fails(api: Server) -> None:
    """R4 §3.1.0.11.2: when resource identities overlap (two PUTs of one id, a PUT and a DELETE,
    a conditional update resolving to the id another entry writes), the transaction SHALL fail:
    400 naming both entries, nothing stored. A batch runs them one by one."""
    patient = _example("pedall-patient-1")
    patient["id"] = "tx-twice"
    system = patient["identifier"][0]["system"]
    patient["identifier"][0]["value"] = "tx-twice"
    put = {"resource": patient, "request": {"method": "PUT", "url": "Patient/tx-twice"}}
    other = {"resource": {**patient, "gender": "other"}, "request": {"method": "PUT", "url": "Patient/tx-twice"}}
    for entries in ([put, other],
                    [put, {"request": {"method": "DELETE", "url": "Patient/tx-twice"}}],
                    [put, {"resource": {k: v for k, v in patient.items() if k != "id"},
                           "request": {"method": "PUT", "url": f"Patient?identifier={system}|tx-twice"}}]):
        r = api.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
        assert r.status_code == 400, r.text
        text = r.json()["issue"][0]["diagnostics"]
        assert r.json()["resourceType"] == "OperationOutcome" and "Patient/tx-twice" in text and "entry[1]" in text
        assert api.client.get("/Patient/tx-twice").status_code == 404
    out = api.client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [put, other]}).json()
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "200 OK"]


def test_conditional_update_and_create(api: Server) -> None:
    patient = _example("pedall-patient-1")
    patient.pop("id", None)
    system = patient["identifier"][0]["system"]
    patient["identifier"][0]["value"] = "cond-1"
    r = api.client.put(f"/Patient?identifier={system}|cond-1", json=patient)
    assert r.status_code == 201
    pid = r.json()["id"]
    r = api.client.put(f"/Patient?identifier={system}|cond-1", json={**patient, "gender": "other"})
    assert r.status_code == 200 and r.json()["id"] == pid and r.json()["meta"]["versionId"] == "2"
    r = api.client.post("/Patient", json=patient, headers={"If-None-Exist": f"identifier={system}|cond-1"})
    assert r.status_code == 200 and r.json()["id"] == pid


def test_concurrent_conditional_creates_leave_one(api: Server) -> None:
    patient = _example("pedall-patient-1")
    patient.pop("id", None)
    system = patient["identifier"][0]["system"]
    patient["identifier"][0]["value"] = "race-1"
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1e2d3c-0000-4000-8000-000000000001", "resource": patient,
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={system}|race-1"}}]}

    def post(_: int) -> int:
        with httpx.Client(base_url=api.base, timeout=60) as c:
            return c.post("/", json=bundle).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(post, range(16)))
    assert statuses == [200] * 16
    assert _search(api, "Patient", {"identifier": f"{system}|race-1", "_summary": "count"})["total"] == 1


# -------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize(("method", "url", "kwargs", "status", "needle"), [
    ("POST", "/Patient", {"content": b"{not json", "headers": {"content-type": FHIR}}, 400, "not valid JSON"),
    ("POST", "/Patient", {"json": {"resourceType": "Observation"}}, 400, "resourceType is 'Observation'"),
    ("POST", "/Patient", {"json": [1, 2]}, 400, "not a FHIR resource"),
    ("GET", "/Observation?colour=red", {}, 400, "unknown search parameter 'colour'"),
    ("GET", "/Observation?date=2019-02-30", {}, 400, "not a FHIR date"),
    ("GET", "/Observation?date=yesterday", {}, 400, "not a FHIR date"),
    ("GET", "/Observation?value-quantity=lots", {}, 400, "not a quantity"),
    ("GET", "/Observation?_count=-1", {}, 400, "_count"),
    ("GET", "/Observation?_include=Observation:nothing", {}, 400, "no reference search parameter"),
    ("GET", "/Observation?_sort=code", {}, 400, "cannot sort"),
    ("GET", "/Observation?code:above=x", {}, 400, "modifier"),
    ("GET", "/Spaceship", {}, 404, "not served"),
    ("PUT", "/Patient/abc", {"json": {"resourceType": "Patient", "id": "xyz"}}, 400, "does not match"),
    ("PUT", "/Patient/abc", {"json": {"resourceType": "Patient", "id": "abc"}, "headers": {"If-Match": "nope"}}, 400, "If-Match"),
    ("POST", "/Patient", {"json": {"resourceType": "Patient", "gender": "robot", "meta": {"profile": [SD + "pedall-patient"]}}},
     422, "failed validation"),
    ("POST", "/", {"json": {"resourceType": "Bundle", "type": "collection"}}, 400, "transaction or batch"),
    ("GET", "/Observation/x/_history/abc", {}, 400, "not a version number"),
])
def test_bad_input_gets_operation_outcome(api: Server, method: str, url: str, kwargs: dict[str, Any], status: int,
                                          needle: str) -> None:
    r = api.client.request(method, url, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert needle in " ".join(i.get("diagnostics", "") for i in body["issue"])


def test_ingest_errors(api: Server, tmp_path: Path) -> None:
    site, mapping, path = EXAMPLE_FILES[1]
    r = _post_export(api.client, path, "nowhere", mapping)
    assert r.status_code == 400 and "nowhere" in r.json()["issue"][0]["diagnostics"]
    r = _post_export(api.client, path, "../hito", mapping)  # a name can never leave mappings/
    assert r.status_code == 400 and "not valid" in r.json()["issue"][0]["diagnostics"]
    r = _post_export(api.client, path, site, "../huanl/curso_corto")
    assert r.status_code == 400 and "not valid" in r.json()["issue"][0]["diagnostics"]
    r = _post_export(api.client, path, site, "no_such_mapping")
    assert r.status_code == 400 and "no_such_mapping" in r.json()["issue"][0]["diagnostics"]
    big = tmp_path / "big.csv"
    big.write_bytes(b"x" * 1_200_000)
    r = _post_export(api.client, big, site, mapping)
    assert r.status_code == 413 and r.json()["issue"][0]["code"] == "too-long"
    junk = tmp_path / "junk.xlsx"
    junk.write_bytes(b"PK\x03\x04 this is not a workbook")
    r = _post_export(api.client, junk, "hito", "seguimiento")
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"


def test_validate_operation(api: Server) -> None:
    good = _example("pedall-mrd-1")
    r = api.client.post("/Observation/$validate", json=good)
    assert r.status_code == 200 and r.json()["issue"][0]["severity"] == "information"
    bad = {**good, "interpretation": good["interpretation"] * 2}
    r = api.client.post("/Observation/$validate", json=bad)
    assert r.status_code == 422
    assert "Observation.interpretation: maximum cardinality 1" in " ".join(i["diagnostics"] for i in r.json()["issue"])


def test_capability_statement_tells_the_truth(api: Server) -> None:
    cs = api.client.get("/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    obs = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    names = {p["name"] for p in obs["searchParam"]}
    assert {"_id", "_lastUpdated", "patient", "subject", "code", "date", "status", "value-quantity", "interpretation"} <= names
    assert SD + "pedall-mrd" in obs["supportedProfile"]
    sub = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Subscription")  # the backport topics offered
    assert sub["extension"] == [{"url": "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
                                        "capabilitystatement-subscriptiontopic-canonical",
                                 "valueCanonical": "https://w3id.org/pedall-fhir/SubscriptionTopic/mrd-result"}]
    assert {o["name"] for o in sub["operation"]} == {"status", "events"}
    for op in sub["operation"]:  # each advertised operation answers for a stored subscription
        sid = api.client.post("/Subscription", json={
            "resourceType": "Subscription", "status": "off", "reason": "capability check", "criteria": "Observation",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/"}}).json()["id"]
        assert api.client.get(f"/Subscription/{sid}/${op['name']}").status_code == 200
        api.client.delete(f"/Subscription/{sid}")
    # every declared parameter of every type is accepted by the server
    for res in cs["rest"][0]["resource"]:
        for p in res.get("searchParam", []):
            value = {"token": "x", "reference": "Patient/x", "date": "2020", "quantity": "1", "string": "x"}[p["type"]]
            r = api.client.get(f"/{res['type']}", params={p["name"]: value})
            assert r.status_code == 200, (res["type"], p["name"], r.text)


def test_access_log_never_holds_a_record_number(api: Server, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    patient = _stored(api, "Patient")[0]
    mrn = patient["identifier"][0]["value"]
    access = logging.getLogger("uvicorn.access")
    old = access.level
    access.setLevel(logging.INFO)
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            assert api.client.get("/Patient", params={"identifier": mrn}).status_code == 200
            time.sleep(0.2)
    finally:
        access.setLevel(old)
    lines = [r.getMessage() for r in caplog.records if r.name == "uvicorn.access"]
    assert lines and all(mrn not in line for line in lines)
    assert any("GET /Patient?" in line for line in lines)


def test_site_search_parameter(api: Server) -> None:
    """_site (ours, in the CapabilityStatement) selects the resources of one site's compartment."""
    for site in ("hito", "huanl"):
        b = api.client.get("/Observation", params={"_site": site, "_summary": "count"}).json()
        assert b["total"] == api.store.counts(site)["Observation"] > 0
    both = api.client.get("/Observation", params={"_site": "hito,huanl", "_summary": "count"}).json()["total"]
    assert both == sum(api.store.counts(s)["Observation"] for s in ("hito", "huanl"))
    assert any(p["name"] == "_site" for p in api.client.get("/metadata").json()["rest"][0]["resource"][0]["searchParam"])
