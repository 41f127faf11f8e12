"""Docs honesty: every transform, concept and CLI command is documented; the mapping JSON Schemas
match the models; every mapping file validates against them; a typo fails at load time naming the
file and key."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml

from adapter.cli import app
from adapter.config import ROOT
from adapter.errors import MappingSpecError
from adapter.mapping import concepts
from adapter.mapping.transforms import get_transform, transform_names
from adapter.spec import load_mapping
from adapter.spec.json_schema import schema_texts

MAPPING_DOC = (ROOT / "mappings" / "README.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", transform_names())
def test_transform_is_documented(name: str) -> None:
    assert f"| `{name}` |" in MAPPING_DOC
    assert (get_transform(name).__doc__ or "").strip()


@pytest.mark.parametrize("name", sorted(concepts()))
def test_concept_is_documented(name: str) -> None:
    assert f"| `{name}` |" in MAPPING_DOC
    for field in concepts()[name].input_model.model_fields:
        assert field in MAPPING_DOC


@pytest.mark.parametrize("command", [c.name or c.callback.__name__ for c in app.registered_commands])
def test_cli_command_is_documented(command: str) -> None:
    assert f"adapter {command}" in README


def test_json_schemas_are_current_and_mappings_conform() -> None:
    for name, text in schema_texts().items():
        assert (ROOT / "mappings" / "schema" / f"{name}.schema.json").read_text(encoding="utf-8") == text
    mapping_schema = json.loads(schema_texts()["mapping"])
    for path in (ROOT / "mappings").glob("*/*.yaml"):
        if path.parent.name not in ("codes", "schema") and path.stem != "site":
            jsonschema.Draft202012Validator(mapping_schema).validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize(("old", "new", "key"), [
    ("valueQuantity: {column: Resultado, pipe: [mrd_percent]}", "valueQuantity: {column: Resultado, pipe: [mrd_percnt]}",
     "sheets[0].resources[0].fields.valueQuantity.pipe[0]"),
    ("  delimiter: \";\"", "  delimter: \";\"", "reader.delimter"),
    ("effectiveDateTime: {column", "effectiveDate: {column", "sheets[0].resources[0].fields.effectiveDate"),
    ("{lookup: {table: specimen}}", "{lookup: {table: specimens}}", "lookup.table"),
    ("- integer: {min: 1, max: 12}", "- integer: {minimum: 1}", "pipe[1]"),
])
def test_typo_fails_at_load_naming_file_and_key(tmp_path: Path, old: str, new: str, key: str) -> None:
    shutil.copytree(ROOT / "mappings", tmp_path / "mappings")
    f = tmp_path / "mappings" / "hito" / "erm_citometria.yaml"
    text = f.read_text(encoding="utf-8")
    assert old in text
    f.write_text(text.replace(old, new), encoding="utf-8")
    with pytest.raises(MappingSpecError) as exc:
        load_mapping("hito", "erm_citometria", tmp_path / "mappings")
    assert str(f) in str(exc.value) and key in str(exc.value)


def test_help_lists_every_command_on_one_line_and_completion_works() -> None:
    import subprocess
    import sys
    from pathlib import Path

    exe = Path(sys.executable).parent / "adapter"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env={"COLUMNS": "200", "PATH": ""},  # noqa: S603
                         timeout=60).stdout
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__.replace("_", "-")
        line = next((ln for ln in out.splitlines() if ln.startswith(f"│ {name} ")), "")
        assert line and cmd.short_help and cmd.short_help in line, (name, cmd.short_help)
    # --show-completion is a flag: typer names the shell from the parent processes (shellingham), and a test run
    # need not have a shell among them (a detached pytest's parent is init), so bash runs it as a child ("; exit":
    # bash -c would otherwise exec the command in its own place)
    comp = subprocess.run(["bash", "-c", f"'{exe}' --show-completion; exit $?"], capture_output=True, text=True,  # noqa: S603, S607
                          timeout=60)
    assert comp.returncode == 0 and "_adapter_completion" in comp.stdout


# ---------------------------------------------------------------- statements about what exists

_DATA_FILES = (".csv", ".xlsx", ".hl7")
_MISSING = re.compile(r"not (?:written|mapped|implemented|supported) yet|not yet (?:written|mapped|implemented)|"
                      r"\bTODO\b|\bcoming soon\b", re.IGNORECASE)


def test_every_example_export_is_mapped_and_ingested_by_make_run() -> None:
    """The README says every example folder is "all mapped": each data file under examples/ is
    ingested by `make run` with a mapping file that exists for its site, and each folder the
    README's tree names exists (and the other way round)."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    runs = re.findall(r"adapter ingest (\S+) --site (\S+) --mapping (\S+)", makefile)
    ingested = {path for path, _, _ in runs}
    for path, site, mapping in runs:
        assert (ROOT / path).is_file(), path
        assert (ROOT / "mappings" / site / f"{mapping}.yaml").is_file(), (site, mapping)
    files = {str(p.relative_to(ROOT)) for p in (ROOT / "examples").rglob("*")
             if p.suffix in _DATA_FILES and "DataDictionary" not in p.name}  # a REDCap data dictionary describes an export
    assert files == ingested, sorted(files ^ ingested)
    tree = README[README.index("examples/ "):README.index("bench/ ")]
    folders = {p.name for p in (ROOT / "examples").iterdir() if p.is_dir()}
    assert all(re.search(rf"\b{f}\b", tree) for f in folders), folders
    assert "all mapped" in tree


@pytest.mark.parametrize("doc", ["README.md", "mappings/README.md", "profiles/README.md", "views/README.md"])
def test_docs_claim_nothing_missing_that_exists(doc: str) -> None:
    """No sentence says a mapping or feature is "not written yet" (or TODO): what is missing is
    named as a limitation with its reason, and statements about what exists are kept true by the
    tests above."""
    text = (ROOT / doc).read_text(encoding="utf-8")
    assert not _MISSING.findall(text), _MISSING.findall(text)
