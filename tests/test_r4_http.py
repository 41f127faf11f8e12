"""What generic FHIR clients expect of the R4 HTTP API (issue 20), over a real uvicorn server on
SQLite and PostgreSQL holding every example export: time zones in date search, ``_lastUpdated``
and history ``_since`` (R4 §3.1.1.4.5, §3.1.0.9); conditional references in transactions and
batches (R4 §3.1.0.11.2)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests.server import Server
from tests.test_api import _all, _example

#: One instant written three ways (R4 dateTime: an offset or Z); the third is the second's
#: previous evening west of Greenwich.
SPELLINGS = ("2020-01-01T00:00:00Z", "2020-01-01T05:30:00+05:30", "2019-12-31T18:00:00-06:00")


def _ids(api: Server, rtype: str, params: dict[str, str]) -> set[str]:
    return {r["id"] for r in _all(api, rtype, {**params, "_count": "1000"})}


def _spell(instant: datetime) -> list[str]:
    """``instant`` (aware) written with Z, +05:30 and -06:00."""
    return [instant.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            instant.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(),
            instant.astimezone(timezone(timedelta(hours=-6))).isoformat()]


@pytest.mark.parametrize("prefix", ["ge", "lt", "gt", "le", "eq"])
def test_one_instant_in_three_time_zones_finds_one_set(api: Server, prefix: str) -> None:
    """R4 §3.1.1.4.5: a date search value with an offset is an instant; Z, +05:30 and -06:00
    spellings of it return the same Observations (before: 205, 0 and 473)."""
    sets = [_ids(api, "Observation", {"date": prefix + s}) for s in SPELLINGS]
    assert sets[0] == sets[1] == sets[2]
    if prefix != "eq":
        everything = _ids(api, "Observation", {})
        assert 0 < len(sets[0]) < len(everything), (prefix, len(sets[0]), len(everything))


def test_a_stored_offset_is_compared_as_its_instant(api: Server) -> None:
    """A result written at 01:00 on 1 March in India (+05:30) happened on 28 February in UTC, the
    server's time zone: a day search finds it on the 28th, not the 1st; an instant search finds it
    in any spelling."""
    obs = _example("pedall-mrd-1")
    obs["id"] = "tz-offset-1"
    obs["effectiveDateTime"] = "2031-03-01T01:00:00+05:30"
    assert api.client.put("/Observation/tz-offset-1", json=obs).status_code in (200, 201)
    assert "tz-offset-1" in _ids(api, "Observation", {"date": "2031-02-28"})
    assert "tz-offset-1" not in _ids(api, "Observation", {"date": "2031-03-01"})
    for spelling in ("2031-02-28T19:30:00Z", "2031-03-01T01:00:00+05:30", "2031-02-28T13:30:00-06:00"):
        assert "tz-offset-1" in _ids(api, "Observation", {"date": f"eq{spelling}"}), spelling
    assert "tz-offset-1" not in _ids(api, "Observation", {"date": "eq2031-02-28T19:31:00Z"})


def test_last_updated_compares_instants(api: Server) -> None:
    """``_lastUpdated`` (R4 §3.1.1.5): one second before a write, in any of three spellings, finds
    it; one second after, in any spelling, does not."""
    org = _example("pedall-organization-1")
    org["id"] = "tz-last-updated"
    r = api.client.put("/Organization/tz-last-updated", json=org)
    assert r.status_code in (200, 201)
    stamp = datetime.fromisoformat(r.json()["meta"]["lastUpdated"].replace("Z", "+00:00"))
    for spelling in _spell(stamp - timedelta(seconds=1)):
        assert "tz-last-updated" in _ids(api, "Organization", {"_lastUpdated": f"ge{spelling}"}), spelling
    for spelling in _spell(stamp + timedelta(seconds=1)):
        assert "tz-last-updated" not in _ids(api, "Organization", {"_lastUpdated": f"ge{spelling}"}), spelling


def test_history_since_and_count(api: Server) -> None:
    """Instance history ``_since`` (R4 §3.1.0.9) is an instant with its offset, ``_count`` the most
    recent versions; another parameter, a bad value or an instant without a zone is a 400."""
    org = _example("pedall-organization-1")
    org["id"] = "tz-history"
    first = api.client.put("/Organization/tz-history", json=org).json()["meta"]["lastUpdated"]
    for name in ("one", "two"):
        api.client.put("/Organization/tz-history", json={**org, "name": name})
    all_versions = api.client.get("/Organization/tz-history/_history").json()
    assert [e["response"]["etag"] for e in all_versions["entry"]] == ['W/"3"', 'W/"2"', 'W/"1"']
    after_first = datetime.fromisoformat(first.replace("Z", "+00:00")) + timedelta(microseconds=1)
    for spelling in _spell(after_first):
        b = api.client.get("/Organization/tz-history/_history", params={"_since": spelling}).json()
        assert [e["response"]["etag"] for e in b["entry"]] == ['W/"3"', 'W/"2"'], spelling
    b = api.client.get("/Organization/tz-history/_history", params={"_count": "1"}).json()
    assert [e["response"]["etag"] for e in b["entry"]] == ['W/"3"']
    for params in ({"_since": "yesterday"}, {"_since": "2020-01-01T00:00:00"}, {"_count": "-1"}, {"_at": "2020"}):
        r = api.client.get("/Organization/tz-history/_history", params=params)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", params


def test_capability_statement_states_the_time_zone(api: Server) -> None:
    doc = api.client.get("/metadata").json()["rest"][0]["documentation"]
    assert "UTC" in doc and "time zone" in doc


# ------------------------------------------------------------------ conditional references (R4 3.1.0.11.2)

def _patient(api: Server) -> dict[str, Any]:
    return api.client.get("/Patient", params={"_count": "1", "_sort": "_id"}).json()["entry"][0]["resource"]


def _mrd(oid: str, subject: str) -> dict[str, Any]:
    obs = _example("pedall-mrd-1")
    obs.pop("partOf", None)
    return {**obs, "id": oid, "subject": {"reference": subject}}


def test_a_conditional_reference_in_a_transaction_is_resolved(api: Server) -> None:
    """The Observation's ``subject`` written as ``Patient?identifier=system|value`` is stored as
    the matching ``Patient/id``: the result belongs to its patient and site, and is found by
    ``Observation?patient=`` and ``$everything`` (before: stored as the query text, no patient)."""
    patient = _patient(api)
    ident = patient["identifier"][0]
    cond = f"Patient?identifier={ident['system']}|{ident['value']}"
    obs = _mrd("cond-ref-tx", cond)
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs, "request": {"method": "PUT", "url": "Observation/cond-ref-tx"}}]})
    assert r.status_code == 200, r.text
    stored = api.client.get("/Observation/cond-ref-tx").json()
    assert stored["subject"]["reference"] == f"Patient/{patient['id']}"
    assert "cond-ref-tx" in _ids(api, "Observation", {"patient": patient["id"]})
    everything = api.client.get(f"/Patient/{patient['id']}/$everything", params={"_type": "Observation",
                                                                                 "_count": "1000"}).json()
    assert "cond-ref-tx" in {e["resource"]["id"] for e in everything["entry"]}
    site = patient["managingOrganization"]["reference"].split("/")[1]  # a site's Organization id is its code
    assert _ids(api, "Patient", {"_site": site, "_id": patient["id"]}) == {patient["id"]}
    assert _ids(api, "Observation", {"_site": site, "_id": "cond-ref-tx"}) == {"cond-ref-tx"}


def test_a_conditional_reference_to_what_the_transaction_creates(api: Server) -> None:
    """Creates run before updates (R4 3.1.0.11.2 order): a PUT entry's conditional reference finds
    the Patient a POST entry of the same transaction creates."""
    patient = _example("pedall-patient-1")
    patient.pop("id", None)
    patient["identifier"] = [{**patient["identifier"][0], "value": "cond-ref-new"}]
    system = patient["identifier"][0]["system"]
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": _mrd("cond-ref-new-obs", f"Patient?identifier={system}|cond-ref-new"),
         "request": {"method": "PUT", "url": "Observation/cond-ref-new-obs"}},
        {"resource": patient, "request": {"method": "POST", "url": "Patient"}}]})
    assert r.status_code == 200, r.text
    new_id = r.json()["entry"][1]["resource"]["id"]
    assert api.client.get("/Observation/cond-ref-new-obs").json()["subject"]["reference"] == f"Patient/{new_id}"


@pytest.mark.parametrize(("query", "status", "code"), [
    ("identifier=urn:none|no-such-record", 400, "not-found"),  # no match
    ("gender=female", 412, "multiple-matches"),  # many
    ("colour=blue", 400, "invalid"),  # not a search this server runs
])
def test_a_conditional_reference_must_match_exactly_one(api: Server, query: str, status: int, code: str) -> None:
    """Zero or several matches fail the whole transaction with an OperationOutcome naming the
    element and the reference; nothing of it is stored."""
    org = {**_example("pedall-organization-1"), "id": f"cond-ref-org-{status}-{code}"}
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": org, "request": {"method": "PUT", "url": f"Organization/{org['id']}"}},
        {"resource": _mrd("cond-ref-bad", f"Patient?{query}"), "request": {"method": "PUT", "url": "Observation/cond-ref-bad"}}]})
    assert r.status_code == status, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == code and "Observation.subject" in issue["diagnostics"] and f"Patient?{query}" in issue["diagnostics"]
    assert api.client.get("/Observation/cond-ref-bad").status_code == 404
    assert api.client.get(f"/Organization/{org['id']}").status_code == 404


def test_conditional_references_in_a_batch_and_a_single_create(api: Server) -> None:
    """A batch resolves each entry on its own (one that matches nothing fails alone); a single
    POST resolves its references too."""
    patient = _patient(api)
    ident = patient["identifier"][0]
    cond = f"Patient?identifier={ident['system']}|{ident['value']}"
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": _mrd("cond-ref-batch", cond), "request": {"method": "PUT", "url": "Observation/cond-ref-batch"}},
        {"resource": _mrd("cond-ref-batch-2", "Patient?identifier=urn:none|x"),
         "request": {"method": "PUT", "url": "Observation/cond-ref-batch-2"}}]})
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "400"]
    assert api.client.get("/Observation/cond-ref-batch").json()["subject"]["reference"] == f"Patient/{patient['id']}"
    obs = _mrd("ignored", cond)
    obs.pop("id")
    r = api.client.post("/Observation", json=obs)
    assert r.status_code == 201 and r.json()["subject"]["reference"] == f"Patient/{patient['id']}"


# ------------------------------------------------------------------ a plain R4 resource (no meta.profile)

def test_a_plain_resource_is_checked_against_the_profile_its_code_calls_for(api: Server) -> None:
    """A generic client's first write has no ``meta.profile``: it is checked against the profile
    for its type and code, and stored declaring it (so the facade and the views classify it); one
    that does not conform gets a 422 saying which profile it was checked against."""
    for name, profile in (("pedall-mrd-1", "pedall-mrd"), ("pedall-vital-status-1", "pedall-vital-status"),
                          ("pedall-observation-1", "pedall-observation"), ("pedall-organization-1", "pedall-organization")):
        res = _example(name)
        res.pop("meta", None)
        res["id"] = f"plain-{name}"
        r = api.client.put(f"/{res['resourceType']}/{res['id']}", json=res)
        assert r.status_code in (200, 201), r.text
        assert r.json()["meta"]["profile"] == [f"https://w3id.org/pedall-fhir/StructureDefinition/{profile}"], name
        check = api.client.post(f"/{res['resourceType']}/$validate", json=res)
        assert check.status_code == 200 and not [i for i in check.json()["issue"] if i["severity"] == "error"], check.text
    r = api.client.post("/Patient", json={"resourceType": "Patient", "gender": "female"})
    assert r.status_code == 422
    texts = [i["diagnostics"] for i in r.json()["issue"]]
    assert any("checked against https://w3id.org/pedall-fhir/StructureDefinition/pedall-patient" in t for t in texts), texts
    assert "Profiles:" in api.client.get("/metadata").json()["rest"][0]["documentation"]


# ------------------------------------------------------------------ item 7: the HTTP points real clients use

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}


def _an_mrd(api: Server) -> dict[str, Any]:
    return api.client.get("/Observation", params={"code": "mrd", "_count": "1"}).json()["entry"][0]["resource"]


def test_summary_and_elements_on_read_and_search(api: Server) -> None:
    """R4 §3.1.1.5.8-9: ``_summary=true`` keeps the summary elements (``note`` is not one),
    ``text`` the narrative, id, meta and mandatory elements, ``data`` all but the narrative;
    ``_elements`` the listed ones plus id, meta and the mandatory ones; each tagged SUBSETTED."""
    full = _an_mrd(api)
    url = f"/Observation/{full['id']}"
    true = api.client.get(url, params={"_summary": "true"}).json()
    assert {"code", "subject", "status", "valueQuantity"} <= set(true) and SUBSETTED in true["meta"]["tag"]
    assert not {"note", "method", "interpretation", "text"} & set(true)
    text = api.client.get(url, params={"_summary": "text"}).json()
    assert set(text) <= {"resourceType", "id", "meta", "text", "status", "code"} and "status" in text
    data = api.client.get(url, params={"_summary": "data"}).json()
    assert "text" not in data and set(data) == set(full) - {"text"}
    elements = api.client.get(url, params={"_elements": "subject,value"}).json()
    assert set(elements) == {"resourceType", "id", "meta", "subject", "valueQuantity", "status", "code"}
    bundle = api.client.get("/Observation", params={"code": "mrd", "_elements": "subject", "_count": "3"}).json()
    assert all(set(e["resource"]) == {"resourceType", "id", "meta", "subject", "status", "code"} for e in bundle["entry"])
    assert "_elements=subject" in next(ln["url"] for ln in bundle["link"] if ln["relation"] == "next")
    bundle = api.client.get("/Observation", params={"code": "mrd", "_summary": "true", "_count": "3"}).json()
    assert all(SUBSETTED in e["resource"]["meta"]["tag"] for e in bundle["entry"])
    assert api.client.get(url).json() == full  # unchanged without them
    for params in ({"_summary": "brief"}, {"_elements": "nosuchelement"}, {"_summary": "count"}):
        r = api.client.get(url, params=params)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", params


def test_prefer_return(api: Server) -> None:
    """R4 §3.1.0.8: ``Prefer: return=minimal`` answers without a body, ``return=OperationOutcome``
    with one, ``return=representation`` (the default) with the resource; headers in every case."""
    org = {**_example("pedall-organization-1"), "id": "prefer-org"}
    r = api.client.put("/Organization/prefer-org", json=org, headers={"Prefer": "return=minimal"})
    assert r.status_code == 201 and r.content == b"" and r.headers["etag"] == 'W/"1"' and "location" in r.headers
    r = api.client.put("/Organization/prefer-org", json={**org, "name": "Prefer"},
                       headers={"Prefer": "return=OperationOutcome"})
    assert r.status_code == 200 and r.json()["resourceType"] == "OperationOutcome" and r.headers["etag"] == 'W/"2"'
    r = api.client.post("/Organization", json={**org, "name": "Prefer 2"}, headers={"Prefer": "return=representation"})
    assert r.status_code == 201 and r.json()["resourceType"] == "Organization"


def test_head_and_conditional_reads(api: Server) -> None:
    """HEAD answers as GET without a body; ``If-None-Match`` with the current ETag and an
    ``If-Modified-Since`` not older than ``lastUpdated`` give 304 (R4 §3.1.0.3.3)."""
    full = _an_mrd(api)
    url = f"/Observation/{full['id']}"
    got = api.client.get(url)
    head = api.client.head(url)
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == got.headers["etag"]
    assert api.client.head("/Observation/no-such-id").status_code == 404
    assert api.client.head("/Observation", params={"code": "mrd"}).status_code == 200
    r = api.client.get(url, headers={"If-None-Match": got.headers["etag"]})
    assert r.status_code == 304 and r.content == b"" and r.headers["etag"] == got.headers["etag"]
    assert api.client.get(url, headers={"If-None-Match": 'W/"999"'}).status_code == 200
    assert api.client.get(url, headers={"If-Modified-Since": got.headers["last-modified"]}).status_code == 304
    assert api.client.get(url, headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200
    assert api.client.get(url, headers={"If-Modified-Since": "not a date"}).status_code == 200


def test_reference_search_forms(api: Server) -> None:
    """R4 §3.1.1.4.6: ``subject=Patient/x``, ``subject:Patient=x``, ``patient=x`` and the absolute
    ``subject=<our base>/Patient/x`` find the same results; a modifier naming another type or a
    non-reference parameter is a 400."""
    pid = _patient(api)["id"]
    forms = [{"subject": f"Patient/{pid}"}, {"subject:Patient": pid}, {"patient": pid},
             {"subject": f"{api.base}/Patient/{pid}"}, {"patient:Patient": pid}]
    sets = [_ids(api, "Observation", f) for f in forms]
    assert sets[0] and all(s == sets[0] for s in sets), [len(s) for s in sets]
    for params in ({"patient:Group": pid}, {"code:Patient": "mrd"}, {"subject:Patient": f"Group/{pid}"},
                   {"subject": f"http://elsewhere.example/fhir/Patient/{pid}"}):
        r = api.client.get("/Observation", params=params)
        assert r.status_code == 400, params


def test_string_search_is_accent_and_case_insensitive(api: Server) -> None:
    """R4 §3.1.1.4.7: ``name=jose`` and ``name=JOSÉ`` find an Organization named "Hospital José"."""
    org = {**_example("pedall-organization-1"), "id": "accent-org", "name": "Hospital Infantil José Martí"}
    assert api.client.put("/Organization/accent-org", json=org).status_code in (200, 201)
    for value in ("hospital infantil jose", "HOSPITAL INFANTIL JOSÉ", "Hospital Infantil Jose\u0301"):
        assert "accent-org" in _ids(api, "Organization", {"name": value}), value
    assert "accent-org" not in _ids(api, "Organization", {"name": "hospital infantil josefa"})


def test_total_method_from_fhirpy(api: Server) -> None:
    """fhirpy's ``count()`` sends ``_count=0&_totalMethod=count``: the exact total, no entries."""
    r = api.client.get("/Observation", params={"code": "mrd", "_count": "0", "_totalMethod": "count"})
    assert r.status_code == 200 and "entry" not in r.json()
    assert r.json()["total"] == len(_ids(api, "Observation", {"code": "mrd"})) > 0
    assert api.client.get("/Observation", params={"_totalMethod": "maybe"}).status_code == 400


def test_a_search_inside_a_batch_and_a_transaction(api: Server) -> None:
    """R4 §3.1.0.11: a GET entry may be a search; its response entry holds the searchset Bundle.
    In a transaction it sees what the transaction wrote before it (GETs run last)."""
    pid = _patient(api)["id"]
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation?patient={pid}&code=mrd"}},
        {"request": {"method": "GET", "url": "Observation?colour=blue"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}}]})
    assert r.status_code == 200, r.text
    first, bad, read = r.json()["entry"]
    assert first["response"]["status"] == "200 OK" and first["resource"]["type"] == "searchset"
    assert {e["resource"]["id"] for e in first["resource"].get("entry", [])} == _ids(api, "Observation", {
        "patient": pid, "code": "mrd"})
    assert bad["response"]["status"] == "400" and read["resource"]["id"] == pid
    org = {**_example("pedall-organization-1"), "id": "tx-search-org", "name": "Searched in its transaction"}
    r = api.client.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Organization?name=searched in its"}},
        {"resource": org, "request": {"method": "PUT", "url": "Organization/tx-search-org"}}]})
    assert r.status_code == 200, r.text
    found = r.json()["entry"][0]["resource"]
    assert [e["resource"]["id"] for e in found["entry"]] == ["tx-search-org"]


def test_capability_statement_claims_what_works(api: Server) -> None:
    """What the CapabilityStatement now claims is answered: conditional reads, and each
    server-wide search parameter on a search."""
    cs = api.client.get("/metadata").json()
    rest = cs["rest"][0]
    assert all(r["conditionalRead"] == "full-support" for r in rest["resource"] if r["type"] != "Measure")
    values = {"_count": "2", "_sort": "-_lastUpdated", "_summary": "data", "_elements": "status", "_total": "accurate"}
    assert {p["name"] for p in rest["searchParam"]} == set(values)
    for name, value in values.items():
        r = api.client.get("/Observation", params={name: value})
        assert r.status_code == 200, (name, r.text)
