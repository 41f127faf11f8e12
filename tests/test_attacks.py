"""The adversarial findings of issue 17, one test (or more) per defect, on a real server with
authentication on, on SQLite and PostgreSQL (the ``secure`` fixture, tests/secure.py): each failed
before its fix. Races are in tests/test_concurrency.py; bad files in tests/test_hardening.py.
"""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import httpx
import pytest

from adapter.store.db import OutsideSite
from tests.secure import Secure

# ------------------------------------------------------------- 1. writes cannot cross sites


def _own_observation(secure: Secure, c: httpx.Client) -> dict[str, Any]:
    """A new MRD Observation of a HITO patient, created by the HITO site client (201)."""
    obs = copy.deepcopy(secure.store.read("Observation", secure.ids["hito-observation"]))
    assert obs is not None
    obs.pop("id")
    obs["meta"] = {"profile": obs["meta"]["profile"]}
    obs["identifier"] = [{"system": "https://w3id.org/pedall-fhir/sid/hito/attack", "value": uuid.uuid4().hex}]
    r = c.post("/Observation", json=obs)
    assert r.status_code == 201, r.text
    return r.json()


def _huanl_courses(secure: Secure) -> str:
    return json.dumps([c.to_json() if hasattr(c, "to_json") else str(c) for c in secure.store.cohort("huanl")],
                      sort_keys=True, default=str)


def test_an_update_cannot_point_at_another_sites_patient(secure: Secure) -> None:
    huanl_patient = f"Patient/{secure.ids['huanl-patient']}"
    before = _huanl_courses(secure)
    with secure.http("site") as c:
        for k in range(12):  # the attack moved another site's CR rate with 12 such PUTs
            own = _own_observation(secure, c)
            moved = {**own, "subject": {"reference": huanl_patient}}
            r = c.put(f"/Observation/{own['id']}", json=moved)
            assert r.status_code == 403, r.text
            assert r.json()["issue"][0]["code"] == "forbidden"
            assert huanl_patient in r.json()["issue"][0]["diagnostics"]  # names the reference, not its site's data
            # version-aware, conditional and transaction updates are held the same way
            r = c.put(f"/Observation/{own['id']}", json=moved, headers={"If-Match": 'W/"1"'})
            assert r.status_code == 403
            ident = own["identifier"][0]
            r = c.put(f"/Observation?identifier={ident['system']}|{ident['value']}", json=moved)
            assert r.status_code == 403
            r = c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": moved, "request": {"method": "PUT", "url": f"Observation/{own['id']}"}}]})
            assert r.status_code == 403
            batch = c.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": moved, "request": {"method": "PUT", "url": f"Observation/{own['id']}"}}]}).json()
            assert batch["entry"][0]["response"]["status"] == "403"
            # a reference anywhere in the resource counts (focus, partOf, extensions ...)
            sneaky = {**own, "focus": [{"reference": huanl_patient}]}
            assert c.put(f"/Observation/{own['id']}", json=sneaky).status_code == 403
            assert secure.store.read("Observation", own["id"])["subject"] == own["subject"]
            if k == 0:  # a reference to an id that exists nowhere is refused with the same answer
                ghost = {**own, "subject": {"reference": "Patient/no-such-patient"}}
                r = c.put(f"/Observation/{own['id']}", json=ghost)
                assert r.status_code == 403 and "is not a resource of site hito" in r.text
    assert _huanl_courses(secure) == before  # the other site's figures did not move


def test_a_transaction_may_reference_what_it_creates_in_any_order(secure: Secure) -> None:
    patient = copy.deepcopy(secure.store.read("Patient", secure.ids["hito-patient"]))
    assert patient is not None
    obs = copy.deepcopy(secure.store.read("Observation", secure.ids["hito-observation"]))
    assert obs is not None
    pid = f"tx-order-{uuid.uuid4().hex[:8]}"
    patient.update(id=pid, identifier=[{"system": patient["identifier"][0]["system"], "value": pid}])
    obs.pop("id")
    obs["subject"] = {"reference": f"Patient/{pid}"}
    obs["identifier"] = [{"system": "https://w3id.org/pedall-fhir/sid/hito/attack", "value": pid}]
    with secure.http("site") as c:
        r = c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": obs, "request": {"method": "POST", "url": "Observation"}},
            {"resource": patient, "request": {"method": "PUT", "url": f"Patient/{pid}"}}]})
    # the Observation's subject is written after it in processing order (POST before PUT); the
    # check runs when the transaction ends, so it resolves
    assert r.status_code == 200, r.text
    oid = next(e["resource"]["id"] for e in r.json()["entry"] if e["resource"]["resourceType"] == "Observation")
    assert secure.store.read("Observation", oid, site="hito") is not None


def test_the_store_never_moves_a_resource_to_another_site(secure: Secure) -> None:
    huanl_obs = secure.store.read("Observation", secure.ids["huanl-observation"])
    assert huanl_obs is not None
    with pytest.raises(OutsideSite), secure.store.transaction() as tx:  # an ingestion of HITO writing it
        tx.upsert([({**huanl_obs, "status": "amended"}, "hito", None)])
    assert secure.store.read("Observation", huanl_obs["id"])["status"] == huanl_obs["status"]


def test_a_course_is_built_from_the_patients_own_site_only(secure: Secure) -> None:
    before = _huanl_courses(secure)
    obs = copy.deepcopy(secure.store.read("Observation", secure.ids["hito-observation"]))
    assert obs is not None
    obs.update(id=f"stray-{uuid.uuid4().hex[:8]}", subject={"reference": f"Patient/{secure.ids['huanl-patient']}"},
               valueQuantity={"value": 0.001, "comparator": "<", "unit": "%", "system": "http://unitsofmeasure.org",
                              "code": "%"})
    obs.pop("meta")
    with secure.store.transaction() as tx:  # stored at HITO (as an unchecked older write could have)
        tx.upsert([(obs, "hito", None)])
    assert _huanl_courses(secure) == before
    everything = secure.store.compartment(secure.ids["huanl-patient"])
    assert obs["id"] not in {r["id"] for r in everything}


# ------------------------------------- 11. a file posted again never reverts an API correction silently


def _post_erm(c: httpx.Client, content: bytes) -> dict[str, Any]:
    r = c.post("/$ingest", files={"file": ("hito_erm_citometria.csv", content)},
               data={"site": "hito", "mapping": "erm_citometria"})
    assert r.status_code == 200, r.text
    last = r.json()["entry"][-1]["response"]["outcome"]["issue"]
    return {"summary": json.loads(last[0]["diagnostics"]), "issues": last[1:]}


def test_reposting_an_unchanged_file_keeps_an_api_correction_and_says_so(secure: Secure) -> None:
    from tests.conftest import EXAMPLES

    erm = (EXAMPLES / "hito" / "hito_erm_citometria.csv").read_bytes()
    obs = next(o for o in secure.store.iter_resources("Observation", site="hito")
               if any(i.get("value") == "CF-190331" for i in o.get("identifier", [])))
    corrected = {**obs, "valueQuantity": {**obs["valueQuantity"], "value": 0.02}}
    with secure.http("site") as c:
        r = c.put(f"/Observation/{obs['id']}", json=corrected)
        assert r.status_code == 200, r.text
        api_version = r.json()["meta"]["versionId"]
        out = _post_erm(c, erm)  # the same file again: the correction stays, and the report names it
        assert out["summary"]["apiVersionsKept"] == [f"Observation/{obs['id']}"]
        assert any(i["severity"] == "warning" and i["code"] == "conflict" and obs["id"] in i["diagnostics"]
                   for i in out["issues"])
        now = c.get(f"/Observation/{obs['id']}").json()
        assert now["meta"]["versionId"] == api_version and now["valueQuantity"]["value"] == 0.02
        # the site corrects the row in its own system: the file's new value replaces the API's, named too
        changed = erm.decode("cp1252").replace("CF-190331;014240;", "CF-190331;014240;", 1)
        lines = changed.split("\r\n") if "\r\n" in changed else changed.split("\n")
        row = next(k for k, line in enumerate(lines) if line.startswith("CF-190331;"))
        cells = lines[row].split(";")
        cells[9] = "0,03"
        lines[row] = ";".join(cells)
        out = _post_erm(c, ("\r\n" if "\r\n" in changed else "\n").join(lines).encode("cp1252"))
        assert out["summary"]["apiVersionsReplaced"] == [f"Observation/{obs['id']}"]
        assert c.get(f"/Observation/{obs['id']}").json()["valueQuantity"]["value"] == 0.03
        # and the original file back: the file changed the row again, no API change since: no notes
        out = _post_erm(c, erm)
        assert out["summary"]["apiVersionsKept"] == out["summary"]["apiVersionsReplaced"] == []
        assert c.get(f"/Observation/{obs['id']}").json()["valueQuantity"]["value"] == obs["valueQuantity"]["value"]


# ------------------------------------------- 2. subscriptions follow roles and scopes, at send time

MRD = "https://w3id.org/pedall-fhir/CodeSystem/observation-code|mrd"


def _rest_hook(criteria: str, endpoint: str = "http://127.0.0.1:9/hook", **channel: Any) -> dict[str, Any]:
    return {"resourceType": "Subscription", "status": "off", "reason": "attack", "criteria": criteria,
            "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json", **channel}}


def _token(secure: Secure, who: str, scope: str) -> httpx.Client:
    r = secure.get_token(secure.clients[who], scope=scope)
    assert r.status_code == 200, r.text
    return httpx.Client(base_url=secure.srv.base, timeout=60, headers={"Authorization": f"Bearer {r.json()['access_token']}"})


def test_subscription_criteria_need_read_access_to_their_type(secure: Secure) -> None:
    with secure.http("subscriber") as c:  # may read Patient, Observation and Subscription only
        for criteria in ("Condition?code=x", "Provenance?agent=Organization/hito", "AdverseEvent?event=crs"):
            r = c.post("/Subscription", json=_rest_hook(criteria))
            assert r.status_code == 403, (criteria, r.text)
            assert r.json()["issue"][0]["code"] == "forbidden"
        assert c.post("/Subscription", json=_rest_hook(f"Observation?code={MRD}")).status_code == 201
        created = c.post("/Subscription", json=_rest_hook(f"Observation?code={MRD}")).json()
        # nor can an update widen it
        assert c.put(f"/Subscription/{created['id']}", json={**created, "criteria": "Provenance?agent=x"}).status_code == 403
    with _token(secure, "site", "system/Subscription.cruds") as narrow:  # a site token for Subscriptions only
        r = narrow.post("/Subscription", json=_rest_hook(f"Observation?code={MRD}"))
        assert r.status_code == 403, r.text


def test_events_check_read_access_when_asked(secure: Secure) -> None:
    with secure.http("subscriber") as c:
        sid = c.post("/Subscription", json={**_rest_hook(f"Observation?code={MRD}"), "status": "requested"}).json()["id"]
    obs = dict(secure.store.read("Observation", secure.ids["hito-observation"]) or {})
    obs["issued"] = "2026-12-03T09:00:00Z"
    with secure.store.transaction() as tx:
        tx.upsert([(obs, "hito", None)])
    with _token(secure, "subscriber", "system/Subscription.cruds") as narrow:
        for content in ("full-resource", "id-only"):
            r = narrow.get(f"/Subscription/{sid}/$events", params={"content": content})
            assert r.status_code == 403, r.text
        r = narrow.get(f"/Subscription/{sid}/$events", params={"content": "empty"})
        assert r.status_code == 200 and "Observation/" not in r.text
    with secure.http("subscriber") as full:
        r = full.get(f"/Subscription/{sid}/$events", params={"content": "full-resource"})
        assert r.status_code == 200 and obs["id"] in r.text


def test_channel_headers_are_write_only_and_deliveries_stop_when_the_owner_loses_access(secure: Secure) -> None:
    from tests.test_subscriptions import Receiver, _wait_for

    receiver = Receiver()
    owner = secure.register("EHR to revoke", "subscriber", "hito")
    secure.clients["to-revoke"] = owner
    try:
        with secure.http("to-revoke") as c:
            sub = {**_rest_hook(f"Observation?code={MRD}", f"http://127.0.0.1:{receiver.port}/hook",
                                header=["Authorization: Bearer ehr-secret-123"]), "status": "requested"}
            r = c.post("/Subscription", json=sub)
            assert r.status_code == 201, r.text
            sid = r.json()["id"]
            assert "ehr-secret-123" not in r.text and r.json()["channel"]["header"] == ["Authorization: ***"]
            # sending the mask back keeps the secret; the stored resource never holds it
            again = c.put(f"/Subscription/{sid}", json=r.json())
            assert again.status_code == 200 and "ehr-secret-123" not in again.text
        with secure.http("site") as site:  # the site's own client cannot read it either
            for url in (f"/Subscription/{sid}", f"/Subscription/{sid}/_history", "/Subscription"):
                body = site.get(url).text
                assert sid in body and "ehr-secret-123" not in body
        with secure.store.engine.connect() as conn:
            from sqlalchemy import text

            dump = "\n".join(t for (t,) in conn.execute(text("SELECT resource FROM resource_history WHERE type = 'Subscription'")))
        assert sid in dump and "ehr-secret-123" not in dump
        _wait_for(lambda: secure.store.read("Subscription", sid)["status"] == "active")

        def write_result(stamp: str) -> None:
            obs = dict(secure.store.read("Observation", secure.ids["hito-observation"]) or {})
            obs["issued"] = stamp
            with secure.store.transaction() as tx:
                tx.upsert([(obs, "hito", None)])

        write_result("2026-12-03T10:00:00Z")
        _wait_for(lambda: len(receiver.events(sid)) == 1)
        assert receiver.events(sid)[0][1]["headers"]["Authorization"] == "Bearer ehr-secret-123"  # delivered with it
        from adapter.store.security import ClientRegistry

        assert ClientRegistry(secure.store).revoke(owner.client_id)
        write_result("2026-12-03T11:00:00Z")
        _wait_for(lambda: secure.store.read("Subscription", sid)["status"] == "error")
        assert "revoked" in secure.store.read("Subscription", sid)["error"]
        assert len(receiver.events(sid)) == 1  # nothing more went out
    finally:
        receiver.stop()


# ------------------------------------------------ 3. no filter re-identifies de-identified output


def _kickoff(c: httpx.Client, type_filter: str) -> httpx.Response:
    return c.get("/Group/site-hito/$export", headers={"Prefer": "respond-async", "Accept": "application/fhir+json"},
                 params={"_type": "Patient", "_typeFilter": type_filter})


def test_de_identified_exports_refuse_filters_on_removed_or_coarsened_elements(secure: Secure) -> None:
    patient = secure.store.read("Patient", secure.ids["hito-patient"])
    assert patient is not None
    ident = next(i for i in patient["identifier"] if i["system"].endswith("/patient"))
    birth = patient["birthDate"]  # e.g. 2009-05-03; de-identified output gives 2009-05
    with secure.http("coordinator") as c:  # a coordinator's exports are always de-identified
        for bad in (f"Patient?identifier={ident['system']}|{ident['value']}", f"Patient?identifier={ident['value']}",
                    f"Patient?birthdate={birth}", f"Patient?birthdate=ge{birth}", f"Patient?birthdate=lt{birth}T12:00"):
            r = _kickoff(c, bad)
            assert r.status_code == 400, (bad, r.status_code, r.text[:200])
            assert r.json()["issue"][0]["diagnostics"].startswith("_typeFilter:")
            assert ident["value"] not in r.text
        for fine in (f"Patient?birthdate={birth[:7]}", f"Patient?birthdate=ge{birth[:4]}", "Patient?gender=male"):
            r = _kickoff(c, fine)
            assert r.status_code == 202, (fine, r.text[:200])
            c.delete(r.headers["content-location"])
    with secure.http("site") as c:  # a site's own de-identified search follows the same rule
        r = c.get("/Patient", params={"identifier": f"{ident['system']}|{ident['value']}", "_deidentify": "true"})
        assert r.status_code == 400 and "identifier" in r.json()["issue"][0]["diagnostics"]
        assert c.get("/Patient", params={"_sort": "birthdate", "_deidentify": "true"}).status_code == 400
        r = c.get("/Patient", params={"birthdate": birth[:7], "_deidentify": "true"})
        assert r.status_code == 200 and r.json()["total"] >= 1
        assert all(len(e["resource"].get("birthDate", "")) <= 7 for e in r.json()["entry"])
        r = c.get("/Patient", params={"identifier": f"{ident['system']}|{ident['value']}"})  # identified: allowed
        assert r.status_code == 200 and r.json()["total"] == 1


def test_with_date_shifting_no_date_filter_is_allowed() -> None:
    from adapter.privacy import DeidentifiedFilterError, check_deidentified_query
    from adapter.search.query import parse

    ok = [("Observation", [("code", "x"), ("_lastUpdated", "ge2020-01-01")]), ("Patient", [("birthdate", "2009")])]
    bad = [("Observation", [("date", "2019")]), ("Procedure", [("date", "ge2019-04")]), ("Patient", [("birthdate", "2009")]),
           ("Patient", [("death-date", "2020")]), ("Observation", [("_sort", "date")])]
    for rtype, items in ok[:1]:
        check_deidentified_query(parse(rtype, items), "year-month", shift_days=30)
    for rtype, items in ok[1:]:
        check_deidentified_query(parse(rtype, items), "year", shift_days=0)
    for rtype, items in bad:
        with pytest.raises(DeidentifiedFilterError):
            check_deidentified_query(parse(rtype, items), "year-month", shift_days=30)
    with pytest.raises(DeidentifiedFilterError):  # a month is finer than the kept year
        check_deidentified_query(parse("Patient", [("birthdate", "2009-05")]), "year", shift_days=0)


# ----------------------------------------------- 4. the token audience never comes from a header


def test_the_token_audience_ignores_the_host_header(secure: Secure) -> None:
    import time

    import jwt

    from adapter.auth.tokens import ASSERTION_TYPE
    from tests.secure import TOKEN_KEY

    c = secure.clients["site"]
    evil = "evil.example:8443"
    assertion = secure.assertion(c, aud=f"http://{evil}/auth/token")
    r = secure.srv.client.post("/auth/token", headers={"Host": evil}, data={
        "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion,
        "scope": "system/*.cruds"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    now = int(time.time())  # an access token minted for that other audience, presented with its Host
    token = jwt.encode({"iss": f"http://{evil}", "aud": f"http://{evil}", "sub": c.client_id, "role": "site",
                        "site": "hito", "scope": "system/*.cruds", "iat": now, "exp": now + 300}, TOKEN_KEY, algorithm="HS256")
    r = secure.srv.client.get("/Patient", headers={"Host": evil, "Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    conf = secure.srv.client.get("/.well-known/smart-configuration", headers={"Host": evil}).json()
    assert conf["token_endpoint"] == secure.token_url  # discovery names the real endpoint whatever the Host


# ------------------------------------------- 5. the endpoint allow-list is matched on parsed URLs


def test_subscription_endpoints_outside_the_allow_list_are_refused_and_never_contacted(secure: Secure) -> None:
    import socket
    import threading

    from tests.server import Server

    contacted: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(1)
                try:
                    contacted.append(conn.recv(1024))
                except OSError:
                    contacted.append(b"")

    threading.Thread(target=accept, daemon=True).start()
    base = "https://fhir.test.example"
    prod = Server(secure.store, secure.settings.model_copy(update={
        "env": "production", "base_url": base, "subscription_endpoint_allowlist": ["https://ehr.example/hook"]}))
    try:
        c = secure.clients["subscriber"]
        from adapter.auth.tokens import ASSERTION_TYPE

        r = prod.client.post("/auth/token", data={
            "grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": secure.assertion(c, aud=f"{base}/auth/token"),
            "scope": "system/Subscription.cruds system/Observation.rs"})
        assert r.status_code == 200, r.text
        auth = {"Authorization": f"Bearer {r.json()['access_token']}"}
        for endpoint in (f"https://ehr.example@127.0.0.1:{port}/x", "https://ehr.example/hook/../internal-admin",
                         "https://ehr.example/hookother", "https://ehr.example.attacker.invalid/x",
                         f"https://127.0.0.1:{port}/hook"):
            sub = {**_rest_hook(f"Observation?code={MRD}", endpoint), "status": "requested"}
            r = prod.client.post("/Subscription", json=sub, headers=auth)
            assert r.status_code == 422, (endpoint, r.status_code, r.text[:300])
        ok = {**_rest_hook(f"Observation?code={MRD}", "https://ehr.example/hook/mrd"), "status": "off"}
        assert prod.client.post("/Subscription", json=ok, headers=auth).status_code == 201
        import time

        time.sleep(1.0)  # a delivery worker runs in this server: nothing may reach the listener
        assert contacted == []
    finally:
        stop.set()
        prod.stop()
        listener.close()


# ------------------------------------ 6. sign-in forgery, weak keys, 405 without Allow (headers: above)


def test_a_sign_in_form_posted_from_another_site_is_refused(secure: Secure) -> None:
    import re

    with secure.http("coordinator") as c:
        token = c.headers["authorization"].split()[1]
    anon = httpx.Client(base_url=secure.srv.base, timeout=60)
    try:
        # an attacker's page posts its own token to the victim's browser: no anti-forgery token, or another Origin
        r = anon.post("/ui/login", data={"token": token})
        assert r.status_code == 403 and "adapter_ui_token" not in r.headers.get("set-cookie", "")
        page = anon.get("/ui/login").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        r = anon.post("/ui/login", data={"token": token, "csrf": csrf}, headers={"Origin": "https://attacker.example"})
        assert r.status_code == 403 and "adapter_ui_token" not in r.headers.get("set-cookie", "")
        r = anon.post("/ui/login", data={"token": token, "csrf": "guessed"})
        assert r.status_code == 403
        csrf = re.search(r'name="csrf" value="([^"]+)"', anon.get("/ui/login").text).group(1)  # type: ignore[union-attr]
        r = anon.post("/ui/login", data={"token": token, "csrf": csrf}, headers={"Origin": secure.srv.base})
        assert r.status_code == 303 and "adapter_ui_token" in r.headers["set-cookie"]
    finally:
        anon.close()


def test_rsa_keys_under_2048_bits_are_refused_at_registration_and_at_the_token_endpoint(secure: Secure) -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    from adapter.auth.clients import RegistrationError, check_registration
    from adapter.auth.tokens import ASSERTION_TYPE
    from adapter.store.security import ClientRegistry

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    jwk = {**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak", "alg": "RS384"}
    with pytest.raises(RegistrationError, match="1024 bits"):
        check_registration("site", "hito", None, {"keys": [jwk]})
    # a weak key registered before the rule (written straight into the registry) verifies nothing
    client = ClientRegistry(secure.store).add("legacy engine", "site", "hito", ["system/*.cruds"], {"keys": [jwk]})
    now = int(time.time())
    import warnings

    with warnings.catch_warnings():  # PyJWT warns about signing with a 1024-bit key: that is the point
        warnings.simplefilter("ignore")
        assertion = jwt.encode({"iss": client.client_id, "sub": client.client_id, "aud": secure.token_url,
                                "exp": now + 200, "jti": uuid.uuid4().hex}, weak, algorithm="RS384", headers={"kid": "weak"})
    r = secure.srv.client.post("/auth/token", data={"grant_type": "client_credentials", "client_assertion": assertion,
                                                     "client_assertion_type": ASSERTION_TYPE, "scope": "system/*.cruds"})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


@pytest.mark.parametrize(("method", "path", "allowed"), [
    ("PATCH", "/Patient/abc", {"GET", "PUT", "DELETE"}),
    ("DELETE", "/metadata", {"GET"}),
    ("DELETE", "/$export", {"GET", "POST"}),
])
def test_405_names_the_allowed_methods(secure: Secure, method: str, path: str, allowed: set[str]) -> None:
    with secure.http("site") as c:
        r = c.request(method, path)
    assert r.status_code == 405, r.text
    assert allowed <= {m.strip() for m in r.headers["allow"].split(",")}
    assert r.json()["resourceType"] == "OperationOutcome"


def test_deliveries_never_follow_a_redirect(secure: Secure) -> None:
    """An allowed endpoint that answers 302 to somewhere else: the notification is not sent there
    (the delivery counts as failed and is retried), so a redirect cannot widen the allow-list."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from tests.test_subscriptions import Receiver, _wait_for

    elsewhere = Receiver()
    hits: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{elsewhere.port}/stolen")
            self.send_header("content-length", "0")
            self.end_headers()

        do_POST = do_PUT  # noqa: N815

        def log_message(self, *args: Any) -> None:
            pass

    redirector = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        with secure.http("subscriber") as c:
            sub = {**_rest_hook(f"Observation?code={MRD}", f"http://127.0.0.1:{redirector.server_address[1]}/hook"),
                   "status": "requested"}
            sid = c.post("/Subscription", json=sub).json()["id"]
        _wait_for(lambda: secure.store.read("Subscription", sid)["status"] == "active")
        obs = dict(secure.store.read("Observation", secure.ids["hito-observation"]) or {})
        obs["issued"] = "2026-12-03T12:00:00Z"
        with secure.store.transaction() as tx:
            tx.upsert([(obs, "hito", None)])
        _wait_for(lambda: len(hits) >= 2)  # tried, answered 302, retried
        assert elsewhere.got == []  # never followed
        with secure.store.engine.connect() as conn:
            from sqlalchemy import text

            row = conn.execute(text("SELECT delivered, last_error FROM subscription_events WHERE subscription_id = :s"),
                               {"s": sid}).first()
        assert row is not None and row[0] is None and "302" in (row[1] or "")
    finally:
        redirector.shutdown()
        elsewhere.stop()
