"""Concurrent writes on a real server and client, SQLite and PostgreSQL (issue 17, defects 7-9):
bounded bursts of simultaneous requests over loopback, each burst repeated ``ROUNDS`` times in a
row (``ADAPTER_CONCURRENCY_ROUNDS``, default 2); ``make test`` (and so CI) runs this whole module 5
times in a row, each time on new databases. Every write path must answer a 2xx, a 4xx, or a 503
with ``Retry-After`` (a queue), never another 5xx, and leave no duplicate resource and no gap or
duplicate in a version history.

- 16 ``If-Match`` PUTs of one version: exactly one wins, the rest get 412;
- 16 plain PUTs of one resource with different content: 16 new versions, numbered without gaps;
- 8 conditional creates of one new Patient with criteria spelled four ways: one Patient;
- 16 ``$ingest`` of one file: the resources and versions of a single ingestion;
- 16 ``$ingest`` alternating a file and its corrected version: every stored version is one
  ingestion's content, numbered without gaps, and the last ingestion's content is current;
- 8 transactions updating the same Patient and Organization in opposite orders (a deadlock on
  PostgreSQL unless the store runs the loser again).
"""

from __future__ import annotations

import copy
import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import Settings
from tests.conftest import EXAMPLES, ROOT, _store_on
from tests.server import Server

ROUNDS = int(os.environ.get("ADAPTER_CONCURRENCY_ROUNDS", "2"))
ERM = EXAMPLES / "hito" / "hito_erm_citometria.csv"


def _example(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "profiles" / "examples" / f"{name}.json").read_text())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def srv(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    with _store_on(request.param, tmp_path_factory.mktemp("race")) as store:
        server = Server(store, settings.model_copy(update={"max_upload_bytes": 1_000_000}))
        try:
            yield server
        finally:
            server.stop()


def burst(srv: Server, n: int, call: Callable[[httpx.Client, int], httpx.Response]) -> list[httpx.Response]:
    """``call(client, k)`` for k in 0..n-1, from n threads released at once (a barrier), each with
    its own connection. Asserts that nothing answered a 5xx other than 503 + Retry-After."""
    gate = threading.Barrier(n)

    def one(k: int) -> httpx.Response:
        with httpx.Client(base_url=srv.base, timeout=180) as c:
            gate.wait()
            return call(c, k)

    with ThreadPoolExecutor(n) as pool:
        out = list(pool.map(one, range(n)))
    for r in out:
        assert r.status_code < 500 or (r.status_code == 503 and r.headers.get("retry-after")), (r.status_code, r.text[:300])
    return out


def history_versions(srv: Server, path: str) -> list[int]:
    hist = srv.client.get(f"{path}/_history").json()
    return sorted(int(e["response"]["etag"].split('"')[1]) for e in hist["entry"])


def test_if_match_puts_have_one_winner(srv: Server) -> None:
    org = _example("pedall-organization-1")
    org["id"] = "race-if-match"
    assert srv.client.put("/Organization/race-if-match", json=org).status_code in (200, 201)
    for rnd in range(ROUNDS):
        version = int(srv.client.get("/Organization/race-if-match").json()["meta"]["versionId"])

        def put(c: httpx.Client, k: int, rnd: int = rnd, version: int = version) -> httpx.Response:
            return c.put("/Organization/race-if-match", json={**org, "name": f"round {rnd} writer {k}"},
                         headers={"If-Match": f'W/"{version}"'})

        statuses = sorted(r.status_code for r in burst(srv, 16, put))
        assert statuses == [200] + [412] * 15, statuses
        assert history_versions(srv, "/Organization/race-if-match") == list(range(1, version + 2))


def test_plain_puts_become_the_next_versions(srv: Server) -> None:
    org = _example("pedall-organization-1")
    org["id"] = "race-plain"
    assert srv.client.put("/Organization/race-plain", json=org).status_code in (200, 201)
    for rnd in range(ROUNDS):
        before = int(srv.client.get("/Organization/race-plain").json()["meta"]["versionId"])

        def put(c: httpx.Client, k: int, rnd: int = rnd) -> httpx.Response:
            return c.put("/Organization/race-plain", json={**org, "name": f"plain round {rnd} writer {k}"})

        out = burst(srv, 16, put)
        assert sorted(r.status_code for r in out) == [200] * 16
        assert sorted(int(r.json()["meta"]["versionId"]) for r in out) == list(range(before + 1, before + 17))
        assert history_versions(srv, "/Organization/race-plain") == list(range(1, before + 17))


def test_conditional_creates_in_several_spellings_leave_one(srv: Server) -> None:
    patient = _example("pedall-patient-1")
    patient.pop("id", None)
    system = patient["identifier"][0]["system"]
    for rnd in range(ROUNDS):
        value = f"race-spelling-{rnd}"
        body = copy.deepcopy(patient)
        body["identifier"][0]["value"] = value
        body["gender"] = "female"
        spellings = [f"identifier={system}|{value}", f"identifier={system}|{value}&gender=female",
                     f"gender=female&identifier={system}|{value}", f"identifier={value}"]

        def create(c: httpx.Client, k: int, body: dict[str, Any] = body, spellings: list[str] = spellings) -> httpx.Response:
            return c.post("/Patient", json=body, headers={"If-None-Exist": spellings[k % len(spellings)]})

        out = burst(srv, 8, create)
        assert sorted(r.status_code for r in out) == [200] * 7 + [201], [r.status_code for r in out]
        assert len({r.json()["id"] for r in out}) == 1
        found = srv.client.get("/Patient", params={"identifier": f"{system}|{value}", "_summary": "count"}).json()
        assert found["total"] == 1


def _ingest(c: httpx.Client, path: Path, **form: str) -> httpx.Response:
    with path.open("rb") as fh:
        return c.post("/$ingest", files={"file": (path.name, fh)},
                      data={"site": "hito", "mapping": "erm_citometria", **form})


def _site_state(srv: Server) -> dict[tuple[str, str], tuple[int, str]]:
    """(type, id) -> (version, content without meta) of every hito resource but the Provenance."""
    out = {}
    for r in srv.store.iter_resources(site="hito"):
        if r["resourceType"] != "Provenance":
            out[(r["resourceType"], r["id"])] = (int(r["meta"]["versionId"]), json.dumps(
                {k: v for k, v in r.items() if k != "meta"}, sort_keys=True))
    return out


def test_concurrent_ingestions_of_one_file_store_it_once(srv: Server) -> None:
    dry = _ingest(srv.client, ERM, dry_run="true")
    assert dry.status_code == 200, dry.text
    expected = {tuple(e["fullUrl"].rsplit("/", 2)[-2:]) for e in dry.json()["entry"][:-1]}
    assert not _site_state(srv), "the site starts empty: the first burst races to create every resource"
    provenance = 0
    reports = 0
    for _ in range(ROUNDS):
        out = burst(srv, 16, lambda c, k: _ingest(c, ERM))
        ok = [r for r in out if r.status_code == 200]
        assert len(ok) + sum(r.status_code == 503 for r in out) == 16 and ok
        state = _site_state(srv)
        expected_here = {k for k in expected if k[0] != "Provenance"}
        assert set(state) == expected_here
        assert {v for v, _ in state.values()} == {1}  # one ingestion's versions: nothing written twice
        provenance = provenance or srv.store.counts(site="hito").get("Provenance", 0)
        provs = [r for r in srv.store.iter_resources(site="hito") if r["resourceType"] == "Provenance"]
        assert len(provs) == provenance == 1, [(p["recorded"], [t["reference"] for t in p["target"]][:5], len(p["target"]))
                                               for p in provs]
        reports += len(ok)
        assert len(srv.store.ingestion_reports("hito")) == reports


def test_alternating_corrected_files_version_without_gaps(srv: Server, tmp_path: Path) -> None:
    text = ERM.read_bytes().decode("cp1252")
    corrected = tmp_path / "hito_erm_citometria_corrected.csv"
    corrected.write_bytes(text.replace("CF-190331;014240;RAMOS TREJO CHRISTOPHER;03/05/2009;M;02/04/2019",
                                       "CF-190331;014240;RAMOS TREJO CHRISTOPHER;03/05/2009;M;02/04/2019")
                          .replace(";0,01;%;<0,01;Control al término del ciclo 1", ";0,02;%;<0,01;Control al término del ciclo 1", 1)
                          .encode("cp1252"))
    assert corrected.read_bytes() != ERM.read_bytes()
    assert _ingest(srv.client, ERM).status_code == 200
    base = _site_state(srv)
    assert _ingest(srv.client, corrected).status_code == 200
    changed = {k for k, v in _site_state(srv).items() if base.get(k, (0, ""))[1] != v[1]}
    assert changed, "the corrected file changes at least one resource"
    contents = {k: {base[k][1], _site_state(srv)[k][1]} for k in changed}
    files = [ERM, corrected]
    for _ in range(ROUNDS):
        out = burst(srv, 16, lambda c, k: _ingest(c, files[k % 2]))
        assert all(r.status_code in (200, 503) for r in out)
        state = _site_state(srv)
        assert set(state) == set(base)  # no duplicate resource, none lost
        for key in changed:
            rtype, rid = key
            hist = srv.client.get(f"/{rtype}/{rid}/_history").json()["entry"]
            versions = sorted(int(e["response"]["etag"].split('"')[1]) for e in hist)
            assert versions == list(range(1, len(versions) + 1))
            bodies = [json.dumps({k: v for k, v in e["resource"].items() if k != "meta"}, sort_keys=True)
                      for e in sorted(hist, key=lambda e: int(e["response"]["etag"].split('"')[1]))]
            assert set(bodies) <= contents[key]  # every version is one of the two files' content
            assert all(a != b for a, b in zip(bodies, bodies[1:], strict=False))  # each version changed something


def test_transactions_on_one_patient_in_opposite_orders(srv: Server) -> None:
    org = _example("pedall-organization-1")
    org["id"] = "race-tx-org"
    patient = _example("pedall-patient-1")
    patient["id"] = "race-tx-patient"
    patient["identifier"][0]["value"] = "race-tx"
    patient["managingOrganization"] = {"reference": "Organization/race-tx-org"}
    assert srv.client.put("/Organization/race-tx-org", json=org).status_code in (200, 201)
    assert srv.client.put("/Patient/race-tx-patient", json=patient).status_code in (200, 201)
    for rnd in range(ROUNDS):
        before = (int(srv.client.get("/Organization/race-tx-org").json()["meta"]["versionId"]),
                  int(srv.client.get("/Patient/race-tx-patient").json()["meta"]["versionId"]))

        def tx(c: httpx.Client, k: int, rnd: int = rnd) -> httpx.Response:
            entries = [
                {"resource": {**org, "name": f"tx {rnd}.{k}"}, "request": {"method": "PUT", "url": "Organization/race-tx-org"}},
                {"resource": {**patient, "birthDate": f"20{10 + k % 9:02d}-0{1 + rnd % 9}-1{k % 9}"},
                 "request": {"method": "PUT", "url": "Patient/race-tx-patient"}},
            ]
            return c.post("/", json={"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries if k % 2 else entries[::-1]})

        out = burst(srv, 8, tx)
        ok = [r for r in out if r.status_code == 200]
        assert len(ok) == 8, [(r.status_code, r.text[:200]) for r in out if r.status_code != 200]
        after = (int(srv.client.get("/Organization/race-tx-org").json()["meta"]["versionId"]),
                 int(srv.client.get("/Patient/race-tx-patient").json()["meta"]["versionId"]))
        assert after[0] == before[0] + 8
        assert history_versions(srv, "/Organization/race-tx-org") == list(range(1, after[0] + 1))
        assert history_versions(srv, "/Patient/race-tx-patient") == list(range(1, after[1] + 1))


def _large_erm(path: Path, rows: int) -> Path:
    """The HITO MRD export grown to ``rows`` rows: each original row repeated under new folios and
    record numbers (new patients' results), in the site's own format (cp1252, ';')."""
    lines = ERM.read_bytes().decode("cp1252").splitlines()
    header, body = lines[0], [line for line in lines[1:] if line.strip()]
    out = [header]
    k = 0
    while len(out) <= rows:
        for line in body:
            cells = line.split(";")
            cells[0] = f"CF-L{k:06d}"
            cells[1] = f"9{int(cells[1]) % 1000:03d}{k // len(body):04d}"
            out.append(";".join(cells))
            k += 1
            if len(out) > rows:
                break
    path.write_bytes(("\r\n".join(out) + "\r\n").encode("cp1252"))
    return path


def test_concurrent_ingestions_of_a_large_file_queue_or_retry_later(srv: Server, tmp_path: Path) -> None:
    """16 posts of a 3,000-row file at once: each waits for the one before it (a per-site lock;
    SQLite's single writer) or, past the wait limit, gets 503 with Retry-After; never a 500."""
    big = _large_erm(tmp_path / "hito_erm_large.csv", 3000)
    before = srv.store.version_total()
    out = burst(srv, 16, lambda c, k: _ingest(c, big))
    ok = [r for r in out if r.status_code == 200]
    assert ok and len(ok) + sum(r.status_code == 503 for r in out) == 16
    created = srv.store.version_total() - before
    again = _ingest(srv.client, big)
    assert again.status_code == 200
    assert srv.store.version_total() - before == created  # a further post of the same file changes nothing
    report = next(e for e in again.json()["entry"] if e["fullUrl"].startswith("urn:uuid:"))
    summary = json.loads(report["response"]["outcome"]["issue"][0]["diagnostics"])
    assert summary["rowsRead"] == 3000 and summary["rowsRejected"] == 0
