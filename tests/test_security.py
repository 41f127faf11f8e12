"""Security (issue 7), on a real server with authentication on, both backends: SMART Backend
Services tokens, each role against each operation, site isolation route by route, the audit trail.

Clients are registered with real RSA (RS384) and EC P-384 (ES384) keys; every token comes from the
token endpoint with a signed client assertion, as a hospital's integration engine would get it.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import jwt
import pytest
from sqlalchemy import select, text

from adapter.config import ROOT, Settings
from adapter.store import Store
from adapter.store.schema import audit_events, resources
from adapter.store.security import ClientRegistry
from tests.conftest import EXAMPLES
from tests.secure import ASYNC, TOKEN_KEY, Secure, _keypair, _lines, _subscription, _wait

# ---------------------------------------------------------------------------------- discovery


def test_discovery_and_the_token_flow(secure: Secure) -> None:
    anon = secure.srv.client
    conf = anon.get("/.well-known/smart-configuration").json()
    assert conf["token_endpoint"] == secure.token_url
    assert conf["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert "client-confidential-asymmetric" in conf["capabilities"]
    cap = anon.get("/metadata")  # capabilities stay public, and name the token endpoint
    assert cap.status_code == 200
    security = cap.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == secure.token_url
    r4 = json.loads((ROOT / "profiles" / "fhir.r4.schema.json").read_text())  # the element against its R4 definition
    r4.pop("oneOf")
    assert jsonschema_rs.validator_for({**r4, "$ref": "#/definitions/CapabilityStatement_Security"}).is_valid(security)
    r = secure.get_token(secure.clients["subscriber"], scope="system/Observation.rs system/Observation.c")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    body = r.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert body["scope"] == "system/Observation.rs"  # narrowed to what the subscriber role allows
    r = secure.get_token(secure.clients["subscriber"], scope="system/AuditEvent.rs")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope"


# ------------------------------------------------------------------------------- bad tokens


def _b64(d: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()


def _access_claims(secure: Secure, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    c = secure.clients["site"]
    return {"iss": secure.srv.base, "aud": secure.srv.base, "sub": c.client_id, "role": "site", "site": "hito",
            "scope": "system/*.cruds", "iat": now, "exp": now + 300, **over}


@pytest.mark.parametrize("kind", ["missing", "expired", "wrong-signature", "alg-none", "wrong-audience", "revoked-client",
                                  "unknown-client"])
def test_bad_access_tokens_get_401_with_an_operation_outcome(secure: Secure, kind: str) -> None:
    now = int(time.time())
    if kind == "missing":
        token = None
    elif kind == "expired":
        token = jwt.encode(_access_claims(secure, iat=now - 900, exp=now - 600), TOKEN_KEY, algorithm="HS256")
    elif kind == "wrong-signature":
        token = jwt.encode(_access_claims(secure), "another-key-another-key-another-key!", algorithm="HS256")
    elif kind == "alg-none":
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_access_claims(secure))}."
    elif kind == "wrong-audience":
        other = "http://other-server.example/fhir"
        token = jwt.encode(_access_claims(secure, aud=other, iss=other), TOKEN_KEY, algorithm="HS256")
    elif kind == "revoked-client":
        c = secure.register("to be revoked", "site", "hito")
        token = secure.get_token(c).json()["access_token"]
        assert ClientRegistry(secure.store).revoke(c.client_id)
    else:
        token = jwt.encode(_access_claims(secure, sub=str(uuid.uuid4())), TOKEN_KEY, algorithm="HS256")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = secure.srv.client.get(f"/Observation/{secure.ids['hito-observation']}", headers=headers)
    assert r.status_code == 401, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.headers["www-authenticate"].startswith("Bearer ")
    assert (token or "") not in r.text or not token


@pytest.mark.parametrize("kind", ["expired", "wrong-signature", "alg-none", "replayed-jti", "wrong-audience",
                                  "unknown-client", "too-long-lived", "sub-not-client"])
def test_bad_client_assertions_are_refused(secure: Secure, kind: str) -> None:
    c = secure.clients["site"]
    now = int(time.time())
    if kind == "expired":
        a = secure.assertion(c, exp=now - 120)
    elif kind == "wrong-signature":
        other, _, _ = _keypair("RS384")
        a = jwt.encode({"iss": c.client_id, "sub": c.client_id, "aud": secure.token_url, "exp": now + 200,
                        "jti": str(uuid.uuid4())}, other, algorithm="RS384", headers={"kid": c.kid})
    elif kind == "alg-none":
        a = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'iss': c.client_id, 'sub': c.client_id, 'aud': secure.token_url, 'exp': now + 200, 'jti': 'x'})}."
    elif kind == "replayed-jti":
        a = secure.assertion(c)
        assert secure.get_token(c, a).status_code == 200
    elif kind == "wrong-audience":
        a = secure.assertion(c, aud="https://other-server.example/auth/token")
    elif kind == "unknown-client":
        ghost = str(uuid.uuid4())
        a = secure.assertion(c, iss=ghost, sub=ghost)
    elif kind == "too-long-lived":
        a = secure.assertion(c, exp=now + 3600)
    else:
        a = secure.assertion(c, sub="someone-else")
    r = secure.get_token(c, a)
    assert r.status_code == 401, r.text
    assert r.json()["error"] == "invalid_client"


# ------------------------------------------------------------------------------- role matrix

ROLES = ("site", "subscriber", "coordinator", "admin")


def _op_read(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get(f"/Observation/{s.ids['hito-observation']}")


def _op_search_include(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/Observation", params={"_include": "Observation:subject", "_count": "5"})


def _op_search_revinclude(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/Patient", params={"_revinclude": "Observation:subject", "_count": "2"})


def _op_history(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get(f"/Patient/{s.ids['hito-patient']}/_history")


def _op_transaction(s: Secure, c: httpx.Client) -> httpx.Response:
    obs = s.store.read("Observation", s.ids["hito-observation"])
    assert obs is not None
    return c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": obs, "request": {"method": "PUT", "url": f"Observation/{obs['id']}"}}]})


def _op_everything(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get(f"/Patient/{s.ids['hito-patient']}/$everything")


def _op_group_export(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/Group/site-hito/$export", headers=ASYNC)


def _op_system_export(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/$export", headers=ASYNC, params={"_type": "Patient"})


def _op_subscription_create(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.post("/Subscription", json=_subscription("Observation?_site=hito"))


def _op_outcomes(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/outcomes", params={"timepoint": "12"})


def _op_audit_search(s: Secure, c: httpx.Client) -> httpx.Response:
    return c.get("/AuditEvent", params={"_count": "5"})


def _op_ingest(s: Secure, c: httpx.Client) -> httpx.Response:
    path = EXAMPLES / "hito" / "hito_erm_citometria.csv"
    with path.open("rb") as fh:
        return c.post("/$ingest", files={"file": (path.name, fh)}, data={"site": "hito", "mapping": "erm_citometria"})


#: operation -> expected status for (site, subscriber, coordinator, admin); site and subscriber are HITO's
MATRIX: dict[str, tuple[Any, tuple[int, int, int, int]]] = {
    "read": (_op_read, (200, 200, 403, 403)),
    "search+_include": (_op_search_include, (200, 200, 403, 403)),
    "search+_revinclude": (_op_search_revinclude, (200, 200, 403, 403)),
    "history": (_op_history, (200, 200, 403, 403)),
    "transaction": (_op_transaction, (200, 403, 403, 403)),
    "$everything": (_op_everything, (200, 403, 403, 403)),
    "Group $export": (_op_group_export, (202, 403, 202, 403)),
    "system $export": (_op_system_export, (202, 403, 403, 403)),
    "subscription create": (_op_subscription_create, (201, 201, 403, 403)),
    "outcomes": (_op_outcomes, (403, 403, 200, 403)),
    "audit search": (_op_audit_search, (403, 403, 403, 200)),
    "$ingest": (_op_ingest, (200, 403, 403, 403)),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("operation", list(MATRIX))
def test_each_role_gets_exactly_the_allowed_outcome(secure: Secure, operation: str, role: str) -> None:
    fn, expected = MATRIX[operation]
    with secure.http(role) as c:
        r = fn(secure, c)
    assert r.status_code == expected[ROLES.index(role)], r.text[:500]
    if r.status_code >= 400:
        assert r.json()["resourceType"] == "OperationOutcome"


def test_a_coordinator_export_is_de_identified(secure: Secure) -> None:
    with secure.http("coordinator") as c:
        r = c.get("/Group/site-hito/$export", headers=ASYNC)
        assert r.status_code == 202
        manifest = _wait(c, r.headers["content-location"])
        assert manifest["requiresAccessToken"] is True
        assert manifest["extension"]["https://w3id.org/pedall-fhir/bulk"]["deidentification"]
        patients = _lines(c, manifest, "Patient")
    assert patients and all(i["system"].endswith("pseudonym") for p in patients for i in p.get("identifier", []))
    assert all(len(p.get("birthDate", "")) <= 7 and "name" not in p for p in patients)


def test_a_coordinators_measure_report_leaves_out_small_cells(secure: Secure) -> None:
    """$evaluate-measure for a coordinator (figures computed by plans/default.yaml over the views):
    a count from 1 to 4 is left out of the population, with the score and interval computed from
    it."""
    with secure.http("coordinator") as c:
        r = c.get("/Measure/blinatumomab-outcomes/$evaluate-measure")
    assert r.status_code == 200, r.text[:300]
    counts = [p.get("count") for g in r.json()["group"] for s in g["stratifier"][0]["stratum"] for p in s["population"]]
    assert counts and all(k is None or k == 0 or k >= 5 for k in counts) and None in counts
    small = [s for g in r.json()["group"] for s in g["stratifier"][0]["stratum"] if any("count" not in p for p in s["population"][1:])]
    assert small and all("measureScore" not in s and "extension" not in s for s in small)


# --------------------------------------------------------------- site A never sees site B


def test_isolation_read_vread_and_history(secure: Secure) -> None:
    obs, pat = secure.ids["hito-observation"], secure.ids["hito-patient"]
    with secure.http("site-huanl") as c:
        for url in (f"/Observation/{obs}", f"/Observation/{obs}/_history/1", f"/Observation/{obs}/_history",
                    f"/Patient/{pat}", f"/Patient/{pat}/_history"):
            r = c.get(url)
            assert r.status_code == 404, (url, r.status_code)
            assert r.json()["issue"][0]["code"] == "not-found"  # as for an id that never existed
        assert c.get(f"/Observation/{secure.ids['huanl-observation']}").status_code == 200


def test_isolation_search(secure: Secure) -> None:
    huanl = {r["id"] for r in secure.store.iter_resources("Patient", site="huanl")}
    with secure.http("site-huanl") as c:
        r = c.get("/Observation", params={"_count": "500"}).json()
        assert r["total"] == sum(1 for _ in secure.store.iter_resources("Observation", site="huanl"))
        assert all(e["resource"]["subject"]["reference"].split("/")[1] in huanl for e in r["entry"])
        assert c.get("/Observation", params={"_id": secure.ids["hito-observation"]}).json()["total"] == 0
        assert c.get("/Observation", params={"_site": "hito"}).json()["total"] == 0


def _cross_site_observation(secure: Secure) -> str:
    """An Observation stored at HITO whose subject is a HUANL Patient (a mis-mapped cross-site
    reference), written directly into the store."""
    obs = dict(secure.store.read("Observation", secure.ids["hito-observation"]) or {})
    oid = f"cross-{uuid.uuid4().hex[:8]}"
    obs.update(id=oid, subject={"reference": f"Patient/{secure.ids['huanl-patient']}"})
    obs.pop("meta", None)
    with secure.store.transaction() as tx:
        tx.upsert([(obs, "hito", None)])
    return oid


def test_isolation_revinclude_and_include(secure: Secure) -> None:
    oid = _cross_site_observation(secure)
    with secure.http("site-huanl") as c:
        r = c.get("/Patient", params={"_id": secure.ids["huanl-patient"], "_revinclude": "Observation:subject"}).json()
        ids = {e["resource"]["id"] for e in r["entry"]}
        assert secure.ids["huanl-patient"] in ids and oid not in ids
    with secure.http("site") as c:  # HITO sees its Observation, but not the HUANL Patient it points to
        r = c.get("/Observation", params={"_id": oid, "_include": "Observation:subject"}).json()
        assert [e["resource"]["id"] for e in r["entry"]] == [oid]


def test_isolation_everything(secure: Secure) -> None:
    with secure.http("site-huanl") as c:
        assert c.get(f"/Patient/{secure.ids['hito-patient']}/$everything").status_code == 404
        assert c.get("/Group/site-hito/$everything").status_code == 404
        mine = c.get(f"/Patient/{secure.ids['huanl-patient']}/$everything").json()
        assert all(e["resource"]["resourceType"] != "Patient" or e["resource"]["id"] == secure.ids["huanl-patient"]
                   for e in mine["entry"])


def _version(secure: Secure, rtype: str, rid: str) -> int:
    with secure.store.engine.connect() as conn:
        return conn.execute(select(resources.c.version_id).where(resources.c.type == rtype, resources.c.id == rid)).scalar_one()


def test_isolation_crafted_transactions(secure: Secure) -> None:
    hito_obs = secure.store.read("Observation", secure.ids["hito-observation"])
    assert hito_obs is not None
    before = _version(secure, "Observation", hito_obs["id"])
    changed = {**hito_obs, "status": "amended"}
    new_obs = {**{k: v for k, v in hito_obs.items() if k != "id"}, "meta": {"profile": hito_obs["meta"]["profile"]}}
    huanl_obs = secure.store.read("Observation", secure.ids["huanl-observation"]) or {}
    own = {**{k: v for k, v in huanl_obs.items() if k != "id"}, "meta": {"profile": huanl_obs["meta"]["profile"]}}
    with secure.http("site-huanl") as c:
        cases = [
            ([{"request": {"method": "GET", "url": f"Observation/{hito_obs['id']}"}}], 404),
            ([{"resource": changed, "request": {"method": "PUT", "url": f"Observation/{hito_obs['id']}"}}], 404),
            ([{"resource": new_obs, "request": {"method": "POST", "url": "Observation"}}], 403),  # subject: a HITO patient
            # an allowed entry and a forbidden one: the whole transaction fails, the allowed one is not written
            ([{"fullUrl": "urn:uuid:" + str(uuid.uuid4()), "resource": {**own, "status": "preliminary"},
               "request": {"method": "POST", "url": "Observation"}},
              {"resource": changed, "request": {"method": "PUT", "url": f"Observation/{hito_obs['id']}"}}], 404),
        ]
        total = sum(1 for _ in secure.store.iter_resources("Observation"))
        for entries, status in cases:
            r = c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": entries})
            assert r.status_code == status, r.text[:400]
            assert hito_obs["id"] not in r.text or "Bundle.entry" in r.text
        r = c.request("DELETE", f"/Observation/{hito_obs['id']}")
        assert r.status_code in (200, 204)  # nothing of another site is deleted (R4: delete of nothing is a success)
    assert _version(secure, "Observation", hito_obs["id"]) == before
    assert sum(1 for _ in secure.store.iter_resources("Observation")) == total
    assert secure.store.read("Observation", hito_obs["id"])["status"] == hito_obs["status"]


def test_isolation_subscription_criteria_cannot_widen_the_site(secure: Secure) -> None:
    with secure.http("subscriber") as c:
        sub = {**_subscription("Observation?_site=huanl"), "status": "requested"}
        r = c.post("/Subscription", json=sub)
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        wide = c.post("/Subscription", json={**_subscription("Observation"), "status": "requested"}).json()["id"]
    for site in ("huanl", "hito"):  # one write at each site
        obs = dict(secure.store.read("Observation", secure.ids[f"{site}-observation"]) or {})
        obs["issued"] = f"2026-12-0{1 if site == 'huanl' else 2}T10:00:00Z"
        with secure.store.transaction() as tx:
            tx.upsert([(obs, site, None)])
    with secure.store.engine.connect() as conn:
        events = {s: [r for (r,) in conn.execute(text(
            "SELECT resource_id FROM subscription_events WHERE subscription_id = :s"), {"s": s})] for s in (sid, wide)}
    assert events[sid] == []  # criteria naming HUANL match nothing for a HITO subscriber
    assert events[wide] == [secure.ids["hito-observation"]]  # a criteria-wide subscription sees HITO only
    with secure.http("site-huanl") as c:
        assert c.get(f"/Subscription/{sid}").status_code == 404
        assert c.get(f"/Subscription/{sid}/$events").status_code == 404


def test_isolation_export(secure: Secure) -> None:
    huanl = {r["id"] for r in secure.store.iter_resources("Patient", site="huanl")}
    with secure.http("site-huanl") as c:
        assert c.get("/Group/site-hito/$export", headers=ASYNC).status_code == 404
        r = c.get("/$export", headers=ASYNC, params={"_type": "Patient,Observation"})
        assert r.status_code == 202
        status_url = r.headers["content-location"]
        manifest = _wait(c, status_url)
        patients, observations = _lines(c, manifest, "Patient"), _lines(c, manifest, "Observation")
    assert {p["id"] for p in patients} == huanl
    assert observations and all(o["subject"]["reference"].split("/")[1] in huanl for o in observations)
    with secure.http("site") as other:  # another client cannot poll or download it
        assert other.get(status_url).status_code == 404
        assert other.get(manifest["output"][0]["url"]).status_code == 404


def test_a_site_client_ingests_only_for_its_site(secure: Secure) -> None:
    path = EXAMPLES / "hito" / "hito_erm_citometria.csv"
    with secure.http("site-huanl") as c, path.open("rb") as fh:
        r = c.post("/$ingest", files={"file": (path.name, fh)}, data={"site": "hito", "mapping": "erm_citometria"})
    assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome"


# ------------------------------------------------------------------------------------- audit


def test_the_audit_trail_lists_every_call(secure: Secure) -> None:
    c = secure.register("audited engine", "site", "hito")
    secure.clients["audited"] = c
    calls: list[tuple[str, str, int]] = []
    with secure.http("audited") as h:
        calls.append(("POST", "/auth/token", 200))
        mrn = "014240"  # a HITO record number, searched for: never in the audit trail
        for method, url in [("GET", f"/Patient/{secure.ids['hito-patient']}"), ("GET", f"/Patient?identifier={mrn}"),
                            ("GET", "/Observation/does-not-exist"), ("GET", f"/Patient/{secure.ids['hito-patient']}/_history"),
                            ("GET", "/AuditEvent"), ("DELETE", "/Observation/does-not-exist"), ("GET", "/Foo")]:
            r = h.request(method, url)
            calls.append((method, url.split("?")[0], r.status_code))
    denied = secure.srv.client.get("/Patient", headers={"Authorization": "Bearer forged"})  # an authentication failure
    assert denied.status_code == 401
    with secure.http("admin") as a:
        r = a.get("/AuditEvent", params={"agent": c.client_id, "_count": "1000"})
        assert r.status_code == 200
        events = [e["resource"] for e in r.json()["entry"]]
        seen = sorted((e["entity"][0]["description"].split(" ", 1)[0], e["entity"][0]["description"].split(" ", 1)[1],
                       int(e["outcomeDesc"].split()[1].rstrip(":"))) for e in events)
        assert seen == sorted(calls)
        failed = a.get("/AuditEvent", params={"outcome": "12", "_count": "1000"}).json()
    assert any(e["resource"]["entity"][0]["description"] == "GET /Patient" and e["resource"]["outcomeDesc"].startswith("HTTP 401")
               for e in failed["entry"])  # authentication failures are audited (outcome 12)
    schema = jsonschema_rs.validator_for(json.loads((ROOT / "profiles" / "fhir.r4.schema.json").read_text()))
    for e in events:
        assert schema.is_valid(e), list(schema.iter_errors(e))[:1]
        assert e["agent"][0]["who"]["identifier"]["value"] == c.client_id
    with secure.store.engine.connect() as conn:
        dump = "\n".join(t for (t,) in conn.execute(select(audit_events.c.resource)))
    assert mrn not in dump
    assert all(cl.token not in dump for cl in secure.clients.values() if cl.token)
    names = {n for p in secure.store.iter_resources("Patient") for nm in p.get("name", []) for n in
             [nm.get("family", ""), *nm.get("given", [])] if n}
    assert not any(n in dump for n in names)


def test_the_audit_trail_is_append_only(secure: Secure) -> None:
    assert secure.srv.client.get("/metadata").status_code == 200  # at least one event
    time.sleep(0.2)  # written after the response
    with secure.store.engine.connect() as conn:
        assert conn.execute(select(audit_events.c.id).limit(1)).first() is not None
    for stmt in ("UPDATE audit_events SET outcome = '0'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"), secure.store.engine.begin() as conn:
            conn.execute(text(stmt))


# ---------------------------------------------------------------------- schemathesis with auth


@pytest.mark.parametrize("data", ["generated", "realistic"])
def test_schemathesis_with_a_site_token_finds_no_server_error(secure: Secure, tmp_path: Path, data: str) -> None:
    """schemathesis (its CLI) with a fresh site token, at least 100 examples per operation: once
    with every value generated, once with the path parameters set to resources that exist (so the
    fuzzing reaches reads, histories, updates and exports of real data). No 5xx."""
    import re
    import subprocess
    import sys

    r = secure.get_token(secure.clients["site"])  # fresh: the run outlasts a token fetched earlier
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    config = tmp_path / "schemathesis.toml"
    if data == "realistic":
        config.write_text("\n".join([
            "[parameters]",
            '"path.rtype" = "Observation"',
            f'"path.rid" = "{secure.ids["hito-observation"]}"',
            '"path.gid" = "site-hito"',
            '"path.vid" = "1"',
        ]) + "\n")
    else:
        config.write_text("")
    st = Path(sys.executable).parent / "schemathesis"
    proc = subprocess.run(  # noqa: S603  (our own virtualenv's executable, fixed arguments)
        [str(st), "--config-file", str(config), "run", f"{secure.srv.base}/openapi.json",
         "-H", f"Authorization: Bearer {token}", "--checks", "not_a_server_error", "--max-examples", "100",
         "--seed", "20261203", "--no-color"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    tail = proc.stdout[-4000:]
    assert proc.returncode == 0, tail
    m = re.search(r"(\d+) generated, \1 passed", tail)
    assert m and int(m.group(1)) >= 1000, tail  # every generated case passed, and there were many


# ------------------------------------------------------------------ settings, modes and the CLI


def test_production_settings_fail_fast_without_secrets() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        Settings(env="production", _env_file=None)
    msg = str(info.value)
    for name in ("ADAPTER_ID_KEY", "ADAPTER_PSEUDONYM_KEY", "ADAPTER_TOKEN_KEY", "ADAPTER_DATABASE_URL", "ADAPTER_BASE_URL"):
        assert name in msg
    with pytest.raises(ValidationError, match="ADAPTER_AUTH"):
        Settings(env="production", id_key="k" * 32, pseudonym_key="p" * 32, token_key="t" * 32,
                 database_url="postgresql+psycopg://db/adapter", base_url="https://fhir.example.org", auth=False,
                 _env_file=None)
    with pytest.raises(ValidationError, match="ADAPTER_BASE_URL"):  # the tokens' audience: never a Host header
        Settings(env="production", id_key="k" * 32, pseudonym_key="p" * 32, token_key="t" * 32,
                 database_url="postgresql+psycopg://db/adapter", _env_file=None)
    ok = Settings(env="production", id_key="k" * 32, pseudonym_key="p" * 32, token_key="t" * 32,
                  database_url="postgresql+psycopg://db/adapter", base_url="https://fhir.example.org", _env_file=None)
    assert ok.auth_enabled
    assert not Settings(_env_file=None).auth_enabled  # development: the one-command demo needs no keys


def _cli(args: list[str], env: dict[str, str], timeout: float = 120) -> Any:
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "adapter"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)  # noqa: S603


def test_the_real_cli_refuses_production_without_secrets_and_dev_mode_on_other_interfaces(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3"}
    r = _cli(["summary"], {**env, "ADAPTER_ENV": "production"})
    assert r.returncode == 2 and "ADAPTER_TOKEN_KEY" in r.stderr
    r = _cli(["serve", "--host", "0.0.0.0"], {**env, "ADAPTER_ENV": "development"})  # noqa: S104
    assert r.returncode == 2 and "127.0.0.1 only" in r.stderr


def test_clients_cli_adds_lists_and_revokes(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path}/a.sqlite3"}
    key, jwk, _ = _keypair("ES384")
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    r = _cli(["clients", "add", "--name", "HITO EHR", "--role", "subscriber", "--site", "hito", "--jwks",
              str(tmp_path / "jwks.json")], env)
    assert r.returncode == 0, r.stderr
    client_id = r.stdout.split("client_id:")[1].split()[0]
    listed = json.loads(_cli(["clients", "list", "--json"], env).stdout)
    assert [(c["client_id"], c["role"], c["site"], c["kids"]) for c in listed] == [(client_id, "subscriber", "hito", [jwk["kid"]])]
    assert "\"x\"" not in json.dumps(listed)  # keys are never printed
    assert _cli(["clients", "revoke", client_id], env).returncode == 0
    assert _cli(["clients", "revoke", client_id], env).returncode == 2  # already revoked
    private = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key))
    (tmp_path / "private.json").write_text(json.dumps({"keys": [private]}))
    for bad in (["--role", "site", "--jwks", str(tmp_path / "jwks.json")],  # a site client needs --site
                ["--role", "admin", "--site", "hito", "--jwks", str(tmp_path / "jwks.json")],
                ["--role", "site", "--site", "hito", "--jwks", str(tmp_path / "private.json")],  # private key material
                ["--role", "subscriber", "--site", "hito", "--scope", "system/*.cruds", "--jwks", str(tmp_path / "jwks.json")]):
        r = _cli(["clients", "add", "--name", "x", *bad], env)
        assert r.returncode == 2, (bad, r.stdout, r.stderr)


def test_a_client_assertion_from_the_cli_gets_a_token(secure: Secure, tmp_path: Path) -> None:
    """The README's curl recipe: ``adapter clients assertion`` signs, the token endpoint answers."""
    import os

    from cryptography.hazmat.primitives import serialization

    c = secure.clients["coordinator"]
    pem = c.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "key.pem").write_bytes(pem)
    r = _cli(["clients", "assertion", "--client-id", c.client_id, "--key", str(tmp_path / "key.pem"), "--kid", c.kid,
              "--alg", "ES384", "--token-url", secure.token_url], dict(os.environ))
    assert r.returncode == 0, r.stderr
    got = secure.get_token(c, r.stdout.strip(), scope="system/MeasureReport.rs")
    assert got.status_code == 200 and got.json()["scope"] == "system/MeasureReport.rs"


def test_cli_ingest_and_client_changes_are_audited(tmp_path: Path) -> None:
    import os

    db = f"sqlite:///{tmp_path}/a.sqlite3"
    env = {**os.environ, "ADAPTER_DATABASE_URL": db}
    path = EXAMPLES / "hito" / "hito_erm_citometria.csv"
    assert _cli(["ingest", str(path), "--site", "hito", "--mapping", "erm_citometria"], env).returncode == 0
    assert _cli(["ingest", str(path), "--site", "hito", "--mapping", "no-such-mapping"], env).returncode == 2
    assert _cli(["clients", "revoke", "nobody"], env).returncode == 2
    store = Store(db)
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit_events.c.method, audit_events.c.path, audit_events.c.status, audit_events.c.client_id)
                            .order_by(audit_events.c.recorded)).all()
    assert [(m, p, s) for m, p, s, _ in rows] == [
        ("CLI", "adapter ingest --site hito --mapping erm_citometria", 200),
        ("CLI", "adapter ingest --site hito --mapping no-such-mapping", 400),
        ("CLI", "adapter clients revoke nobody", 422)]
    assert all(c.startswith("cli:") for *_, c in rows)
    assert not any(path.name in p for _, p, _, _ in rows)  # file names can hold a patient's name: never recorded
    r = _cli(["audit", "--out", str(tmp_path / "audit.ndjson")], env)
    assert r.returncode == 0, r.stderr
    archived = [json.loads(line) for line in (tmp_path / "audit.ndjson").read_text().splitlines()]
    assert [e["entity"][0]["description"] for e in archived] == [f"CLI {p}" for _, p, _, _ in rows]  # oldest first
    assert _cli(["audit"], env).returncode == 0


def test_the_dashboard_follows_the_same_authorization(secure: Secure) -> None:
    assert secure.srv.client.get("/ui/outcomes").status_code == 401
    with secure.http("coordinator") as c:
        page = c.get("/ui/outcomes", params={"timepoint": "12"})
        assert page.status_code == 200 and "<table id=\"outcomes\"" in page.text
        assert c.get("/ui/ingestions").status_code == 403  # row issues hold sites' raw values
    with secure.http("site-huanl") as c:
        assert c.get("/ui/outcomes").status_code == 403
        page = c.get("/ui/ingestions")
        assert page.status_code == 200 and ">huanl<" in page.text and ">hito<" not in page.text
        own = secure.store.ingestion_reports("huanl", newest=1)[0]["ingestion"]
        other = secure.store.ingestion_reports("hito", newest=1)[0]["ingestion"]
        assert c.get(f"/ui/ingestions/{own}").status_code == 200
        assert c.get(f"/ui/ingestions/{other}").status_code == 404  # another site's report: as if absent
    with secure.http("subscriber") as c:
        assert c.get("/ui/subscriptions").status_code == 200


def test_dashboard_sign_in_keeps_the_token_in_a_strict_cookie_for_dashboard_reads_only(secure: Secure) -> None:
    anon = httpx.Client(base_url=secure.srv.base, timeout=60)
    r = anon.get("/ui/outcomes", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    import re

    def csrf() -> str:
        page = anon.get("/ui/login")
        assert page.status_code == 200
        return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]

    bad = anon.post("/ui/login", data={"token": "not-a-token", "csrf": csrf()})
    assert bad.status_code == 401 and "Not signed in" in bad.text and "adapter_ui_token" not in bad.headers.get("set-cookie", "")
    with secure.http("coordinator") as c:
        token = c.headers["authorization"].split()[1]
    r = anon.post("/ui/login", data={"token": token, "csrf": csrf()})
    assert r.status_code == 303 and r.headers["location"] == "/ui/outcomes"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Max-Age=" in cookie
    page = anon.get("/ui/outcomes")  # the client keeps the cookie
    assert page.status_code == 200 and "Sign out" in page.text
    assert anon.get("/outcomes/km.svg", params={"stratify": "site"}).status_code == 200  # the page's pictures
    assert anon.get("/Group/study-pedall-blinatumomab").status_code == 401  # never the FHIR API
    assert anon.post("/Subscription", json=_subscription("Observation")).status_code == 401  # never a write
    assert anon.post("/ui/logout").status_code == 303
    anon.cookies.clear()
    assert anon.get("/ui/outcomes").status_code == 401
    anon.close()
