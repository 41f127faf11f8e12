"""Every produced resource and every profile example passes the three validators: the official R4
JSON Schema (pure-Python jsonschema and jsonschema-rs agree), fhir.resources R4B, and our profiles."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from adapter.config import ROOT, Settings
from adapter.ingest import ingest_file
from adapter.store import Store
from adapter.validation import get_validator
from tests.conftest import EXAMPLE_FILES

PROFILES = ROOT / "profiles"


def _produced() -> list[dict]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        store = Store(f"sqlite:///{d}/v.sqlite3")
        store.migrate()
        s = Settings(database_url=store.url, id_key="test-id-key")
        for site, mapping, path in EXAMPLE_FILES:
            ingest_file(path, site, mapping, store, settings=s)
        out = list(store.iter_resources())
        store.engine.dispose()
        return out


PRODUCED = _produced()
EXAMPLES = sorted((PROFILES / "examples").glob("*.json"))


@pytest.mark.parametrize("resource", PRODUCED, ids=[f"{r['resourceType']}-{i}" for i, r in enumerate(PRODUCED)])  # Provenance ids vary per run
def test_produced_resource_passes_all_three(resource: dict) -> None:
    v = get_validator()
    assert v.validate(resource, full=True) == []
    assert v.schema.errors(resource) == []  # the fast engine agrees
    assert resource["meta"]["profile"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_profile_example_passes_all_three(path: Path) -> None:
    assert get_validator().validate(json.loads(path.read_text()), full=True) == []


def test_every_profile_has_an_example() -> None:
    profiles = {p.stem.removeprefix("StructureDefinition-") for p in PROFILES.glob("StructureDefinition-pedall-*.json")}
    assert profiles == {p.stem.rsplit("-", 1)[0] for p in EXAMPLES}
    # 9+9+18+26+11+2+9 (workbook) + 26 (CSV) + 12+12+61+12+12+10 (HUANL) + 2 Organizations + 3 Provenances
    assert len(PRODUCED) == 234


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*-*.json")), ids=lambda p: p.stem)
def test_conformance_resources_are_valid_r4(path: Path) -> None:
    doc = json.loads(path.read_text())
    errors = get_validator().schema.errors(doc, reference=True)
    # Known defect of the official R4 JSON Schema: its FHIRVersion enum ends at 4.0.0, so it refuses
    # the correct "4.0.1" of R4's technical correction. Only that finding is exempted.
    errors = [e for e in errors if not (e.expression.endswith(".fhirVersion") and "'4.0.1'" in e.message)]
    assert errors == []


def test_profile_json_is_up_to_date() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", PROFILES / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for p, text in mod.build().items():
        assert p.read_text(encoding="utf-8") == text, f"{p.name} is stale: run profiles/build.py"


def _mrd() -> dict:
    return copy.deepcopy(next(r for r in PRODUCED if r["meta"]["profile"][0].endswith("pedall-mrd")))


@pytest.mark.parametrize(("mutate", "validator"), [
    (lambda r: r["valueQuantity"].update(comparator="~"), "r4-schema"),
    (lambda r: r.update(effectiveDateTime="17/06/2019"), "r4-schema"),
    (lambda r: r["valueQuantity"].update(code="mg"), "profile"),
    (lambda r: r.pop("interpretation"), "profile"),
    (lambda r: r["method"]["coding"][0].update(code="flowx"), "profile"),
    (lambda r: r.update(valueString="0.01%") or r.pop("valueQuantity"), "profile"),
    (lambda r: r.update(subject="Patient/x"), "r4b-model"),
])
def test_validators_catch_broken_resources(mutate, validator: str) -> None:
    r = _mrd()
    mutate(r)
    found = {i.validator for i in get_validator().validate(r, full=True)}
    assert validator in found


def test_patient_name_is_refused_by_the_profile() -> None:
    p = copy.deepcopy(next(r for r in PRODUCED if r["resourceType"] == "Patient"))
    p["name"] = [{"family": "Example"}]
    assert any("Patient.name" in i.expression for i in get_validator().validate(p))
