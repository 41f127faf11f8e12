"""The official HL7 FHIR validator (org.hl7.fhir.validation's InstanceValidator, through HAPI FHIR
8.6.5's FhirInstanceValidator; tools/hl7-validator, built by `make test`) over every resource of
every example export, every profile example, and the responses a real server gives (search,
read, history, $everything, batch/transaction responses, OperationOutcomes, the $ingest report,
MeasureReports, the CapabilityStatement), with our StructureDefinitions, CodeSystems and ValueSets
loaded. No error is allowed but those listed in ACCEPTED with the reason; every warning and
information message must be listed too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adapter.config import ROOT, get_settings
from adapter.ingest import ingest_file
from adapter.store import Store
from tests.conftest import ALL_EXAMPLE_FILES
from tests.server import Server

TOOL = ROOT / "tools" / "hl7-validator"
JAR = TOOL / "target" / "hl7-validator-1.jar"

#: (severity, messageId, message pattern, why we accept it). Anything else fails the test. A
#: pattern starting with ``file:`` names the files (a regex) it is accepted in, then ``|`` and the message's.
ACCEPTED: list[tuple[str, str, str, str]] = [
    ("error", "Validation_VAL_Profile_Minimum", r"file:response-\d+-summary-|minimum required = \d+, but only found 0 "
     r"\(from https://w3id\.org/pedall-fhir/",
     "only in the _summary=true response: its resources are tagged SUBSETTED, incomplete by design (R4 3.1.1.5.8), "
     "so elements our profiles require are left out"),
    ("information", "Terminology_TX_NoValid_3_CC", r"value set 'Observation Category Codes'.*assessment-timepoint",
     "Observation.category also carries our assessment-timepoint code (pre-treatment, follow-up); the R4 "
     "value set there is preferred, not required, and its laboratory/survey code is present too where it applies"),
    ("information", "Extension_EXT_Unknown", "subscriptions-backport",
     "the Subscriptions Backport IG's extensions are not available offline"),
    ("information", "BUNDLE_SEARCH_SELF_NOT_UNDERSTOOD", "No types could be determined",
     "the validator does not parse a _summary=count self link; the link is the request as given"),
    ("warning", "Measure_MR_M_NotFound", r"https://w3id\.org/pedall-fhir/Measure/",
     "our Measures are served by the API, not loaded into the offline validator, so it cannot check a "
     "MeasureReport's groups against them (tests/test_outcomes.py does)"),
    ("warning", "http://hl7.org/fhir/StructureDefinition/DomainResource#dom-6", "dom-6",
     "best practice: no narrative. Our resources carry structured data for analysis; a narrative would "
     "repeat it as text (and could carry identifiers into places we pseudonymise)"),
    ("warning", "Terminology_PassThrough_TX_Message",
     r"CodeSystem is unknown and can't be validated: (http://loinc\.org|http://snomed\.info/sct|"
     r"http://www\.nlm\.nih\.gov/research/umls/rxnorm|https://www\.meddra\.org|"
     r"http://ncicb\.nci\.nih\.gov/xml/owl/EVS/Thesaurus\.owl|http://hl7\.org/fhir/sid/icd-10)",
     "LOINC, SNOMED CT, RxNorm, MedDRA, NCI Thesaurus and ICD-10 are not available offline (no terminology "
     "server in CI); codes are taken from ../shared/REFERENCE.md"),
    ("error", "Terminology_PassThrough_TX_Message", r"CodeSystem is unknown and can't be validated: https://www\.meddra\.org",
     "the same, where a cause of death carries our adverse-event-term code and its MedDRA code: offline, the "
     "validator cannot check the MedDRA coding of a required binding; our code in the CodeableConcept is in the "
     "value set (our profile validator checks it)"),
    ("error", "Terminology_TX_NoValid_1_CC", r"value set 'AdverseEventTerm'.*meddra",
     "follows from the previous line: with the MedDRA coding unknown offline, the validator reports the whole "
     "CodeableConcept; its adverse-event-term coding is in the value set"),
    ("warning", "All_observations_should_have_a_performer", "performer",
     "best practice: site exports do not say who performed a test or an assessment"),
    ("warning", "All_observations_should_have_an_effectiveDateTime_or_an_effectivePeriod", "effective",
     "best practice: some exports give no date for a baseline finding (e.g. a fusion gene at diagnosis); "
     "it is kept without inventing one"),
    ("warning", "TYPE_SPECIFIC_CHECKS_DT_QTY_UCUM_ANNOTATIONS", r"\{vial\}",
     "vials are counted with the UCUM annotation {vial}, the usual way to count items in UCUM"),
    ("information", "Extension_EXT_Unknown", "ae-research-backport-ig",
     "the Adverse Event Clinical Research IG's extensions (ae-grade) are not available offline"),
    ("information", "Details_for__matching_against_Profile_", "does not match any known slice",
     "follows from the previous line: an extension the validator cannot resolve matches no slice"),
]


def _accepted(m: dict[str, Any]) -> str | None:
    for severity, message_id, pattern, why in ACCEPTED:
        files = ".*"
        if pattern.startswith("file:"):
            files, pattern = pattern[5:].split("|", 1)
        if (m["severity"] == severity and m["messageId"] == message_id and re.search(pattern, m["message"])
                and re.match(files, m["file"])):
            return why
    return None


def _responses(api: Server) -> list[tuple[str, dict[str, Any]]]:
    """One of each kind of response a client gets from the server, with a kind (``summary`` for
    the subsetted search)."""
    c = api.client
    out: list[dict[str, Any]] = [c.get("/metadata").json()]
    pid = c.get("/Patient", params={"_count": "1"}).json()["entry"][0]["resource"]["id"]
    out.append(c.get("/Observation", params={"code": "mrd", "_count": "5", "_include": "Observation:subject"}).json())
    out.append(c.get("/Patient", params={"_id": pid, "_revinclude": "Observation:subject"}).json())
    out.append(c.get("/Observation", params={"_summary": "count"}).json())
    summary = c.get("/Observation", params={"code": "mrd", "_summary": "true", "_count": "3"}).json()
    out.append(c.get(f"/Patient/{pid}").json())
    out.append(c.get(f"/Patient/{pid}/_history").json())
    out.append(c.get(f"/Patient/{pid}/$everything").json())
    out.append(c.get("/Patient/no-such-patient").json())  # 404 OperationOutcome
    out.append(c.get("/Observation", params={"colour": "blue"}).json())  # 400 OperationOutcome
    out.append(c.post("/Patient", json={"resourceType": "Patient", "gender": "female"}).json())  # 422
    org = json.loads((ROOT / "profiles" / "examples" / "pedall-organization-1.json").read_text())
    out.append(c.post("/", json={"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**org, "id": "hl7v-org"}, "request": {"method": "PUT", "url": "Organization/hl7v-org"}},
        {"request": {"method": "GET", "url": "Organization?name=hospital"}}]}).json())
    out.append(c.post("/", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Patient/none"}}]}).json())
    out.append(c.delete("/Organization/hl7v-org").json())
    for path in ("/Measure/blinatumomab-outcomes/$evaluate-measure", "/Measure/blinatumomab-survival/$evaluate-measure"):
        r = c.get(path)
        if r.status_code == 200:
            out.append(r.json())
    from tests.server import _post_export

    site, mapping, path = ALL_EXAMPLE_FILES[1]
    out.append(_post_export(c, path, site, mapping).json())  # the $ingest report (batch-response Bundle)
    return [("response", r) for r in out] + [("summary", summary)]


@pytest.fixture(scope="module")
def corpus(api: Server, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of JSON files: every example export's resources, every profile example and the responses."""
    folder = tmp_path_factory.mktemp("hl7-validator-in")
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('hl7v-store')}/all.sqlite3")
    store.migrate()
    for site, mapping, path in ALL_EXAMPLE_FILES:
        assert ingest_file(path, site, mapping, store, settings=get_settings()).rows_rejected == 0
    for r in store.iter_resources():
        (folder / f"{r['resourceType']}-{r['id']}.json").write_text(json.dumps(r), encoding="utf-8")
    store.engine.dispose()
    for p in sorted((ROOT / "profiles" / "examples").glob("*.json")):
        shutil.copy(p, folder / f"example-{p.name}")
    for i, (kind, r) in enumerate(_responses(api)):
        (folder / f"response-{i:02d}-{kind}-{r['resourceType']}.json").write_text(json.dumps(r), encoding="utf-8")
    return folder


def test_the_hl7_validator_finds_no_error(corpus: Path) -> None:
    assert JAR.is_file(), "the validator is built by `make test` (tools/hl7-validator: mvn -q -B package)"
    java = shutil.which("java")
    assert java, "Java 17 is needed (.ci/system-deps installs it)"
    files = len(list(corpus.glob("*.json")))
    done = subprocess.run([java, "-cp", f"{JAR}:{TOOL / 'target' / 'lib'}/*", "org.pedall.validator.Validate",
                           str(ROOT / "profiles"), str(corpus)], capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines[-1] == {"files": files} and files > 1800
    messages = [m for m in lines if "severity" in m]
    unexplained = [m for m in messages if _accepted(m) is None]
    kinds = Counter((m["severity"], m["messageId"], m["message"][:160]) for m in unexplained)
    assert not unexplained, json.dumps([list(k) + [n] for k, n in kinds.items()], indent=1)
    tally = Counter((m["severity"], m["messageId"]) for m in messages if "-summary-" not in m["file"])
    errors = {k: v for k, v in tally.items() if k[0] in ("error", "fatal")}
    # outside the subsetted response, the accepted errors are the MedDRA pair of the two causes of
    # death with a MedDRA code (huanl, suzhou), never more
    assert sum(errors.values()) <= 4, errors
    assert any(f.name.startswith("response-") for f in corpus.glob("*.json"))


def test_it_catches_what_it_should(tmp_path: Path) -> None:
    """The same run fails a broken resource: a dosage without dose or rate (mad-1), a code
    outside an R4 required binding, and the lower-case seriousness code the adapter wrote before."""
    assert JAR.is_file(), "the validator is built by `make test` (tools/hl7-validator: mvn -q -B package)"
    ma = json.loads((ROOT / "profiles" / "examples" / "pedall-blinatumomab-infusion-1.json").read_text())
    ma["dosage"] = {"route": ma["dosage"]["route"]}
    (tmp_path / "ma.json").write_text(json.dumps(ma))
    ae = json.loads((ROOT / "profiles" / "examples" / "pedall-adverse-event-1.json").read_text())
    ae["seriousness"]["coding"][0]["code"] = "non-serious"
    ae["actuality"] = "maybe"
    (tmp_path / "ae.json").write_text(json.dumps(ae))
    done = subprocess.run([shutil.which("java") or "java", "-cp", f"{JAR}:{TOOL / 'target' / 'lib'}/*",
                           "org.pedall.validator.Validate", str(ROOT / "profiles"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = [json.loads(line) for line in done.stdout.splitlines() if '"severity":"error"' in line]
    text = json.dumps(errors)
    assert "mad-1" in text and "non-serious" in text and "maybe" in text, text[:2000]
