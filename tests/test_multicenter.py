"""Multicenter onboarding (issue 4): the UK infant registry with its MRD reference laboratory's HL7 v2
feed (seed 004) and the four Mexican centres' exports (seed 001: REDCap, HL7 v2 + event CSV, CSV,
XLSX), posted through the HTTP API to a real server on SQLite and PostgreSQL, reproduce
examples/uk_infants/EXPECTED.md and examples/mx_multicentro/EXPECTED.md; records link across the two files by the hospital number; a
corrected result (OBX-11 "C") versions the Observation it corrects."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from adapter.config import Settings
from adapter.privacy import PSEUDONYM_SYSTEM, PseudonymKeyMissing, deidentify, pseudonym
from tests.conftest import EXAMPLES, _store_on
from tests.server import Server, _post_export

UK = EXAMPLES / "uk_infants"
UK_FEED = UK / "uk_mrd_lab_ORU_R01.hl7"
UK_REGISTRY = UK / "uk_infant_blinatumomab_registry.csv"
SITE = "uk-infants"
MX = EXAMPLES / "mx_multicentro"
MX_FILES = [  # (site, mapping, file): a REDCap export, an HL7 v2 feed + event CSV, an English CSV, a Spanish XLSX
    ("cdmx-a", "redcap", MX / "CDMX-A" / "BlinaLLAMulticentro_DATA_2025-01-15_1032.csv"),
    ("cdmx-b", "lab_erm", MX / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7"),
    ("cdmx-b", "eventos", MX / "CDMX-B" / "eventos_clinicos_CDMX-B.csv"),
    ("cdmx-c", "cohort_csv", MX / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv"),
    ("qro-a", "base_xlsx", MX / "QRO-A" / "base_blinatumomab_QRO-A.xlsx"),
]
MX_SITES = ("cdmx-a", "cdmx-b", "cdmx-c", "qro-a")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings: Settings) -> Iterator[Server]:
    """A server with the UK exports posted: the lab feed first (its patients are not known yet), then
    the registry that brings them."""
    with _store_on(request.param, tmp_path_factory.mktemp("network")) as store:
        srv = Server(store, settings.model_copy(update={"max_upload_bytes": 2_000_000}))
        try:
            srv.first_feed = _post(srv, UK_FEED, "mrd_lab")  # type: ignore[attr-defined]
            r = _post(srv, UK_REGISTRY, "registry")
            assert r["rowsRejected"] == 0, r
            srv.mx_reports = {}  # type: ignore[attr-defined]
            for site, mapping, path in MX_FILES:
                srv.mx_reports[mapping] = _post(srv, path, mapping, site)  # type: ignore[attr-defined]
            yield srv
        finally:
            srv.stop()


def _post(srv: Server, path: Path, mapping: str, site: str = SITE) -> dict[str, Any]:
    """POST /$ingest; the ingestion report (the summary of the batch-response Bundle's last entry)
    with its row issues under ``issues``."""
    r = _post_export(srv.client, path, site, mapping)
    assert r.status_code == 200, r.text
    outcome = r.json()["entry"][-1]["response"]["outcome"]
    report = json.loads(outcome["issue"][0]["diagnostics"])
    report["issues"] = [i for i in outcome["issue"][1:] if i["severity"] != "information"]
    return report


def _uk(srv: Server, **params: Any) -> dict[str, Any]:
    r = srv.client.get("/outcomes", params={"site": SITE, **params})
    assert r.status_code == 200, r.text
    return r.json()["sites"][SITE]


# ------------------------------------------------------------------------------------------- linking


def test_lab_results_posted_before_the_registry_are_kept_and_reported_unlinked(network: Server) -> None:
    first = network.first_feed  # type: ignore[attr-defined]
    assert first["rowsRead"] == 24 and first["rowsMapped"] == 24 and first["rowsRejected"] == 0
    assert first["unlinkedPatients"] == 11
    warnings = first["issues"]
    assert len(warnings) == 11 and {w["severity"] for w in warnings} == {"warning"}
    assert all(w["code"] == "not-found" and "column=PID-3[MR].1" in w["diagnostics"] for w in warnings)
    assert "message=1; segment=OBX 1 (segment 4), MSH-10 MRD161127001" in warnings[0]["diagnostics"]


def test_both_files_meet_in_one_patient_each(network: Server) -> None:
    patients = network.client.get("/Patient", params={"_count": 100, "organization": f"Organization/{SITE}"}).json()
    assert patients["total"] == 11
    again = _post(network, UK_FEED, "mrd_lab")
    assert again["unlinkedPatients"] == 0 and not again["issues"]
    assert again["resources"]["Observation"] == {"unchanged": 24}
    for entry in patients["entry"]:
        pid = entry["resource"]["id"]
        mrd = network.client.get("/Observation", params={"subject": f"Patient/{pid}", "code": "mrd"}).json()
        assert mrd["total"] in (2, 3), pid  # before blinatumomab and after each cycle, from the feed
        proc = network.client.get("/Procedure", params={"subject": f"Patient/{pid}"}).json()
        assert proc["total"] == 1  # the HSCT, from the registry


# ------------------------------------------------------------------------------------ positive, not quantifiable


def test_positive_not_quantifiable_is_stored_without_a_number(network: Server) -> None:
    bundle = network.client.get("/Observation", params={"code": "mrd", "_count": 500}).json()
    assert bundle["total"] <= 500
    pnq = [e["resource"] for e in bundle["entry"] if "dataAbsentReason" in e["resource"]]
    assert len(pnq) == 1
    obs = pnq[0]
    assert "valueQuantity" not in obs
    assert obs["interpretation"][0]["coding"][0]["code"] == "POS"
    assert obs["method"]["coding"][0]["code"] == "rq-pcr"
    assert obs["dataAbsentReason"]["coding"][0]["code"] == "as-text"


# ------------------------------------------------------------------------------- EXPECTED.md section A


def test_uk_infants_expected_figures(network: Server) -> None:
    f = _uk(network, timepoint=36)
    assert f["n"] == 11
    age = f["age_decimal_years"]
    assert (round(age["median"], 1), round(age["min"], 1), round(age["max"], 1)) == (0.5, 0.2, 2.9)
    assert f["indication"] == {"after_relapse": 7, "first_line_refractory": 4}
    assert f["status_at_start"] == {"cr-mrd-positive": 8, "refractory": 3}
    pre = f["mrd"]["pre_percent_by_status"]["cr-mrd-positive"]
    assert (pre["n"], pre["median"], pre["min"], pre["max"]) == (8, 0.2, 0.06, 1.0)
    assert f["exposure"]["patients_by_cycles"] == {"1": 9, "2": 2}
    assert f["mrd"]["after_last_negative"]["count"] == 9  # nine MRD negative ...
    assert f["response"]["counts"]["pr"] == 2  # ... and two with a > 1-log reduction
    assert f["response"]["counts"]["pd"] == 0
    hsct = f["hsct"]
    assert (hsct["count"], hsct["n"]) == (11, 11)
    assert (hsct["days_from_start"]["median"], hsct["days_from_start"]["min"], hsct["days_from_start"]["max"]) == (51, 34, 119)
    fu = hsct["follow_up_days_survivors"]
    assert (fu["n"], fu["median"], fu["min"], fu["max"]) == (9, 267, 58, 1163)
    tox = f["toxicity"]
    assert tox["crs_any"]["count"] == 3 and tox["crs_by_worst_grade"] == {"1": 2, "2": 1}
    assert tox["icans_any"]["count"] == 1
    assert f["deaths"]["count"] == 2 and f["deaths"]["after_hsct"] == 2
    assert f["deaths"]["causes"] == {"pneumonia": 1, "relapse": 1}
    assert f["relapse_or_progression"]["count"] == 4


@pytest.mark.parametrize(("timepoint", "origin", "efs", "os"), [
    (36, "survival_from_hsct", 0.468, 0.808),  # 3-year EFS/OS from HSCT: 46.8 % / 80.8 %
    (36, "survival", 0.505, 0.795),  # from the start of blinatumomab: 50.5 % / 79.5 %
    (12, "survival", 0.505, None),  # 12-month EFS from blinatumomab 50.5 % ...
    (12, "survival_from_hsct", 0.468, None),  # ... and from HSCT 46.8 %
])
def test_uk_infants_kaplan_meier(network: Server, timepoint: float, origin: str, efs: float, os: float | None) -> None:
    f = _uk(network, timepoint=timepoint)[origin]
    assert round(f["rfs"]["survival"], 3) == efs
    if os is not None:
        assert round(f["os"]["survival"], 3) == os


# ------------------------------------------------------------------------------------ corrected results


def _corrected_feed(tmp_path: Path) -> Path:
    """The feed plus one correction message: UKI-05's pre-HSCT result re-issued with OBX-11 "C"."""
    text = UK_FEED.read_bytes().decode()
    messages = [m for m in text.split("MSH|") if m]
    target = next(m for m in messages if "|5 x 10-4|" in m)
    fixed = target.replace("|5 x 10-4|", "|4 x 10-4|").replace("|||F|||", "|||C|||")
    fixed = fixed.replace(target.split("|")[8], target.split("|")[8] + "C", 1)  # a new MSH-10
    p = tmp_path / "uk_feed_with_correction.hl7"
    p.write_bytes(("MSH|" + "MSH|".join(messages) + "MSH|" + fixed).encode())
    return p


def test_a_corrected_result_is_one_new_version(network: Server, tmp_path: Path) -> None:
    feed = _corrected_feed(tmp_path)
    report = _post(network, feed, "mrd_lab")
    assert report["rowsRead"] == 25 and report["rowsRejected"] == 0, report
    assert report["resources"]["Observation"] == {"unchanged": 24, "updated": 1}
    bundle = network.client.get("/Observation", params={"code": "mrd", "status": "corrected"}).json()
    assert bundle["total"] == 1
    obs = bundle["entry"][0]["resource"]
    assert obs["meta"]["versionId"] == "2" and obs["valueQuantity"]["value"] == 0.04
    history = network.client.get(f"/Observation/{obs['id']}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert history["entry"][1]["resource"]["valueQuantity"]["value"] == 0.05
    # posting the corrected feed, or the original feed, again changes nothing: a stored correction
    # is never replaced by the result it corrected
    for f in (feed, UK_FEED):
        again = _post(network, f, "mrd_lab")
        assert set(again["resources"]["Observation"]) == {"unchanged"}, again["resources"]
    assert network.client.get(f"/Observation/{obs['id']}").json()["meta"]["versionId"] == "2"


# ------------------------------------------------------------------------------ mx_multicentro/EXPECTED.md


def test_every_mx_row_is_mapped_or_skipped_for_a_stated_reason(network: Server) -> None:
    reports = network.mx_reports  # type: ignore[attr-defined]
    for mapping, r in reports.items():
        assert r["rowsRejected"] == 0 and r["rowsRead"] == r["rowsMapped"] + r["rowsSkipped"], (mapping, r)
    assert reports["redcap"]["rowsMapped"] == 18 and reports["lab_erm"]["rowsMapped"] == 34
    assert reports["eventos"]["rowsSkipped"] == 58 and len(reports["eventos"]["skipped"]) == 3  # 20 engraftment rows now mapped
    assert reports["eventos"]["unlinkedPatients"] == 0  # the lab feed, posted first, brought the patients


def test_engraftment_days_match_the_paper(network: Server) -> None:
    """EXPECTED.md: neutrophil engraftment between day +12 and +16, platelets between +14 and +21
    (seed 001 Results), from cdmx-b's INJERTO_* dates minus the TCPH date and cdmx-c's day columns."""
    pooled = _pooled_mx(network)["hsct"]
    anc, plt = pooled["neutrophil_engraftment_day"], pooled["platelet_engraftment_day"]
    assert anc["n"] > 0 and plt["n"] > 0
    assert 12 <= anc["min"] and anc["max"] <= 16 and 14 <= plt["min"] and plt["max"] <= 21
    assert {"q1", "q3"} <= set(anc)
    sites = _mx(network)
    assert sites["cdmx-b"]["hsct"]["neutrophil_engraftment_day"]["n"] > 0  # dated events
    assert sites["cdmx-c"]["hsct"]["neutrophil_engraftment_day"]["n"] > 0  # day counts


def _mx(srv: Server, **params: Any) -> dict[str, Any]:
    r = srv.client.get("/outcomes", params={"timepoint": 60, "suppress": "false", **params})
    assert r.status_code == 200, r.text
    body = r.json()
    sites = {s: f for s, f in body["sites"].items() if s in MX_SITES}
    # the pooled figures of the four centres: ask for them alone (the network also holds uk-infants)
    return {**sites, "pooled": _pooled_mx(srv, **params)}


def _pooled_mx(srv: Server, **params: Any) -> dict[str, Any]:
    r = srv.client.get("/outcomes", params={"timepoint": 60, "sites": ",".join(MX_SITES), "suppress": "false", **params})
    assert r.status_code == 200, r.text
    return r.json()["pooled"]


# per centre: N, F/M, age <1/1-10/>10, relapse-1/relapse-2+/refractory, 1 cycle (CR), 2 cycles (CR),
# CR/PR/NR, MRD < 0.01 % after cycle 1, HSCT (haplo/identical), aGVHD by grade, cGVHD (mild), post-HSCT
# relapses, deaths (transplanted), KM at 60 months: OS transplanted, EFS transplanted, OS all (EXPECTED.md B)
MX_TABLE_B = {
    "cdmx-a": (18, (9, 9), (1, 10, 7), (8, 4, 6), (6, 6), (12, 7), (13, 0, 5), 6, (13, 11, 2), {"1": 2, "2": 3, "3": 2}, (8, 2), 5, (9, 4), (0.692, 0.538, 0.5)),
    "cdmx-b": (14, (9, 5), (1, 10, 3), (12, 0, 2), (8, 5), (6, 5), (10, 3, 1), 5, (10, 10, 0), {"3": 1}, (4, 1), 2, (6, 2), (0.9, 0.7, 0.643)),
    "cdmx-c": (12, (6, 6), (0, 10, 2), (9, 3, 0), (6, 4), (6, 5), (9, 2, 1), 4, (10, 10, 0), {"2": 1, "3": 3}, (2, 1), 2, (3, 1), (0.9, 0.8, 0.75)),
    "qro-a": (10, (3, 7), (1, 5, 4), (6, 2, 2), (4, 3), (6, 5), (8, 1, 1), 3, (8, 7, 1), {"1": 2, "2": 1}, (3, 2), 2, (3, 1), (0.875, 0.75, 0.7)),
    "pooled": (54, (27, 27), (3, 35, 16), (35, 9, 10), (24, 18), (30, 22), (40, 6, 8), 18, (41, 38, 3), {"1": 4, "2": 5, "3": 6}, (17, 6), 11, (21, 8), (0.829, 0.683, 0.63)),
}


@pytest.mark.parametrize("group", list(MX_TABLE_B))
def test_mx_multicentro_per_centre_and_pooled(network: Server, group: str) -> None:
    (n, sex, ages, status, one, two, resp, c1neg, hsct, agvhd, cgvhd, relapses, deaths, km) = MX_TABLE_B[group]
    f = _mx(network)[group]
    assert f["n"] == n
    assert (f["sex"].get("female", 0), f["sex"].get("male", 0)) == sex
    assert tuple(f["age_groups"].values()) == ages
    st = f["status_at_start"]
    assert (st.get("first-relapse", 0), st.get("later-relapse", 0), st.get("refractory", 0)) == status
    by_cycles = f["response"]["by_cycles"]
    assert (by_cycles.get("1", {}).get("n", 0), by_cycles.get("1", {}).get("cr", 0)) == one
    assert (by_cycles["2"]["n"], by_cycles["2"]["cr"]) == two
    counts = f["response"]["counts"]
    assert (counts["cr-mrd-negative"], counts["pr"], counts["nr"]) == resp
    assert f["mrd"]["after_cycle1_strict"]["count"] == c1neg
    assert (f["hsct"]["count"], f["hsct"]["hla_match"].get("haploidentical", 0), f["hsct"]["hla_match"].get("identical", 0)) == hsct
    worst = f["toxicity"]["worst_grade_by_event"]
    assert worst.get("acute-gvhd", {}) == agvhd
    assert (sum(worst.get("chronic-gvhd", {}).values()), worst.get("chronic-gvhd", {}).get("1", 0)) == cgvhd
    assert f["relapse_or_progression"]["count"] == relapses
    assert (f["deaths"]["count"], f["deaths"]["after_hsct"]) == deaths
    strata = _mx(network, stratify="hsct")[group]["survival"]
    os_tx, efs_tx, os_all = km
    assert round(strata["os"]["strata"]["hsct"]["survival"], 3) == os_tx
    assert round(strata["rfs"]["strata"]["hsct"]["survival"], 3) == efs_tx
    assert round(strata["os"]["survival"], 3) == os_all


def test_mx_pooled_facts_from_the_paper(network: Server) -> None:
    f = _pooled_mx(network)
    age = f["age_decimal_years"]
    assert round(age["min"] * 12) == 8 and int(age["max"]) == 18  # 8 months to 18 years
    assert f["toxicity"]["crs_by_worst_grade"] == {"1": 25, "2": 4, "3": 1, "4": 2}
    assert f["toxicity"]["crs_any"]["count"] == 32  # 21 without CRS and 1 not evaluable are the other 22
    assert f["toxicity"]["icans_any"]["count"] == 1
    assert f["response"]["cr"]["count"] == 40 and f["response"]["cr"]["rate"] == 0.7407
    assert f["hsct"]["count"] == 41 and f["hsct"]["rate"] == 0.7593
    assert f["deaths"]["causes"]["sepsis"] == 1


@pytest.mark.parametrize(("stratify", "stratum", "endpoint", "expected"), [
    ("donor", "identical", "os", 1.0), ("donor", "haploidentical", "os", 0.816), ("hsct", "no-hsct", "os", 0.0),
    ("cgvhd", "cgvhd", "os", 0.882), ("response", "pr", "os", 0.167), ("response", "nr", "os", 0.0),
    ("response", "cr", "os", 0.825)])
def test_mx_kaplan_meier_at_60_months(network: Server, stratify: str, stratum: str, endpoint: str, expected: float) -> None:
    f = _pooled_mx(network, stratify=stratify)["survival"][endpoint]
    assert round(f["strata"][stratum]["survival"], 3) == expected
    assert f["logrank"]["test"] == "log-rank"


# ------------------------------------------------------------------------------------ pseudonymization


def test_pseudonyms_are_per_site_and_need_the_secret() -> None:
    a = pseudonym("network-secret", "cdmx-a", "2017-1667")
    assert a != pseudonym("network-secret", "cdmx-b", "2017-1667")  # same record number, another site
    assert a == pseudonym("network-secret", "cdmx-a", "2017-1667") and len(a) == 64
    assert a != pseudonym("another-secret", "cdmx-a", "2017-1667")
    for key in (None, ""):
        with pytest.raises(PseudonymKeyMissing):
            pseudonym(key, "cdmx-a", "2017-1667")


def _local_secrets() -> tuple[set[str], set[str]]:
    """Names (whole, and every pair of adjacent words) and local identifiers of the new sites' files."""
    names: set[str] = set()
    ids: set[str] = set()
    with UK_REGISTRY.open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            names.add(f"{r['Forename']} {r['Surname']}")
            ids |= {r["Hospital number"], r["NHS number"]} - {""}
    with (MX / "CDMX-A" / "BlinaLLAMulticentro_DATA_2025-01-15_1032.csv").open(encoding="utf-8-sig") as fh:
        for r in csv.DictReader(fh):
            names.add(f"{r['nombre']} {r['apellido_paterno']} {r['apellido_materno']}")
            ids.add(r["expediente"])
    with (MX / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv").open(encoding="utf-8") as fh:
        for r in csv.DictReader(fh):
            names.add(f"{r['first_name']} {r['last_name']}")
            ids |= {r["mrn"], r["patient_id"]}
    with (MX / "CDMX-B" / "eventos_clinicos_CDMX-B.csv").open(encoding="utf-8") as fh:
        ids |= {r["expediente"] for r in csv.DictReader(fh)}
    for seg in (MX / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7").read_text(encoding="utf-8").split("\r"):
        if seg.startswith("PID|"):
            family, given = seg.split("|")[5].split("^")[:2]
            names.add(f"{given} {family}")
    ws = openpyxl.load_workbook(MX / "QRO-A" / "base_blinatumomab_QRO-A.xlsx", read_only=True)["Base blinatumomab"]
    rows = ws.iter_rows(values_only=True)
    header = list(next(rows))
    for r in rows:
        names.add(f"{r[header.index('Nombre(s)')]} {r[header.index('Apellido paterno')]} {r[header.index('Apellido materno')]}")
        ids.add(str(r[header.index("Expediente")]))
    words = set()
    for n in names:
        parts = n.casefold().split()
        words |= {" ".join(parts), *(" ".join(parts[i:i + 2]) for i in range(len(parts) - 1))}
    assert len(ids) >= 65 and len(words) >= 65
    return words, ids


def test_no_name_or_local_identifier_in_coordinator_outputs(network: Server) -> None:
    words, ids = _local_secrets()
    c = network.client
    patients = c.get("/Patient", params={"_count": 500, "_deidentify": "true"}).json()
    some = [e["resource"]["id"] for e in patients["entry"][::10]]
    outputs = {
        "outcomes": c.get("/outcomes", params={"stratify": "site"}).text,
        "outcomes.csv": c.get("/outcomes.csv").text,
        "measure": c.get("/Measure/blinatumomab-outcomes/$evaluate-measure").text,
        "patients": json.dumps(patients),
        "observations": c.get("/Observation", params={"_count": 500, "_deidentify": "true"}).text,
        "everything": " ".join(c.get(f"/Patient/{p}/$everything", params={"_deidentify": "true"}).text for p in some),
        "km.svg": c.get("/outcomes/km.svg", params={"stratify": "site"}).text,
    }
    for name, text in outputs.items():
        low = text.casefold()
        assert not {w for w in words if w in low}, name
        tokens = set(re.findall(r"[A-Za-z0-9-]+", text))
        assert not (ids & tokens), (name, sorted(ids & tokens)[:5])
    assert patients["total"] == 65
    for e in patients["entry"]:
        p = e["resource"]
        assert [i["system"] for i in p["identifier"]] == [PSEUDONYM_SYSTEM]
        assert len(p.get("birthDate", "2000-01")) == 7  # year and month
    # the site's own read keeps the local identifier, so that its systems can match it
    own = c.get(f"/Patient/{some[0]}").json()
    assert any(i["system"].endswith("/patient") and i["value"] in ids for i in own["identifier"])
    # the pseudonym is the keyed hash of site + local identifier
    site = own["managingOrganization"]["reference"].split("/")[1]
    local = next(i["value"] for i in own["identifier"] if i["system"].endswith("/patient"))
    deid = c.get(f"/Patient/{some[0]}", params={"_deidentify": "true"}).json()
    assert deid["identifier"][0]["value"] == pseudonym("test-pseudonym-key", site, local)


def test_deidentified_output_is_refused_without_the_secret(tmp_path: Path, settings: Settings) -> None:
    with _store_on("sqlite", tmp_path) as store:
        srv = Server(store, settings.model_copy(update={"pseudonym_key": None}))
        try:
            r = _post_export(srv.client, UK_REGISTRY, SITE, "registry")
            assert r.status_code == 200
            pid = srv.client.get("/Patient").json()["entry"][0]["resource"]["id"]
            for path in ("/Patient", f"/Patient/{pid}", f"/Patient/{pid}/$everything"):
                refused = srv.client.get(path, params={"_deidentify": "true"})
                assert refused.status_code == 503 and refused.json()["issue"][0]["code"] == "security", path
            assert srv.client.get(f"/Patient/{pid}").status_code == 200  # the site's own read still works
        finally:
            srv.stop()


def test_year_only_birth_dates_when_configured() -> None:
    pat = {"resourceType": "Patient", "id": "x", "birthDate": "2016-05-22", "managingOrganization": {"reference": "Organization/s"},
           "identifier": [{"system": "https://w3id.org/pedall-fhir/sid/s/patient", "value": "A1"}]}
    assert deidentify(pat, "k", "year")["birthDate"] == "2016"
    assert deidentify(pat, "k")["birthDate"] == "2016-05"
    assert pat["birthDate"] == "2016-05-22"  # the input is not changed


# ------------------------------------------------------------------------------ pooled, suppressed, plotted


def test_small_cells_are_suppressed_in_network_views_and_not_in_a_site_view(network: Server) -> None:
    pooled = network.client.get("/outcomes", params={"sites": ",".join(MX_SITES), "timepoint": 60}).json()
    assert pooled["suppression"]["threshold"] == 5
    f = pooled["pooled"]
    assert f["n"] == 54 and f["hsct"]["count"] == 41
    assert f["toxicity"]["icans_any"] == {"count": "<5", "n": 54, "rate": None, "ci95": None}
    assert f["toxicity"]["crs_by_worst_grade"] == {"1": 25, "2": "<5", "3": "<5", "4": "<5"}
    assert f["hsct"]["hla_match"] == {"haploidentical": 38, "identical": "<5"}
    assert pooled["sites"]["cdmx-b"]["toxicity"]["crs_by_worst_grade"]["1"] == 8
    own = network.client.get("/outcomes", params={"site": "cdmx-b", "timepoint": 60}).json()
    assert "suppression" not in own and own["sites"]["cdmx-b"]["toxicity"]["crs_by_worst_grade"] == {"1": 8, "2": 1, "4": 1}


def test_site_heterogeneity_is_reported_for_pooled_rates(network: Server) -> None:
    f = _pooled_mx(network)
    het = f["heterogeneity"]
    assert set(het) >= {"cr", "hsct", "mrd_negative_after_cycle1", "crs_any"}
    cr = het["cr"]
    assert cr["test"] == "chi-square test of independence (sites x outcome)" and cr["df"] == 3
    assert 0 <= cr["p"] <= 1 and cr["sites"] == list(MX_SITES)


def test_kaplan_meier_by_site_in_one_plot(network: Server) -> None:
    svg = network.client.get("/outcomes/km.svg", params={"stratify": "site", "sites": ",".join(MX_SITES), "timepoint": 60})
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg")
    for site, n in (("cdmx-a", 18), ("cdmx-b", 14), ("cdmx-c", 12), ("qro-a", 10)):
        assert f"{site} (n={n})" in svg.text
    assert "uk-infants" not in svg.text
