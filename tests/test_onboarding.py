"""Onboarding by mapping file alone (issue 4): no Python names a site, and a new site whose export
renames every column and writes dates another way is brought on with one new YAML file (plus its
site file), giving the same figures as the site it was copied from."""

from __future__ import annotations

import ast
import csv
import shutil
from datetime import date
from pathlib import Path

import pytest
import yaml

from adapter.config import ROOT, Settings
from adapter.errors import ReaderError
from adapter.ingest import ingest_file
from adapter.outcomes import outcomes_report
from adapter.store import Store
from tests.conftest import EXAMPLES

SITES = sorted(p.parent.name for p in (ROOT / "mappings").glob("*/site.yaml"))


def _code_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_no_site_specific_python() -> None:
    """Every site's rules live in mappings/; the package names no site outside a cited source."""
    assert len(SITES) >= 7
    found = []
    for path in sorted((ROOT / "adapter").rglob("*.py")):
        for text in _code_strings(path):
            if "EXPECTED.md" in text:  # a citation of where a rule comes from
                continue
            low = text.casefold()
            found += [(path.name, s, text) for s in SITES if s in low.replace("_", "-").split("/") or low == s]
    assert not found, found


RENAMES = {"mrn": "Record No.", "sex": "Gender", "date_of_birth": "DOB", "c1_start": "Cycle 1 start date",
           "c1_end": "Cycle 1 end date", "c2_start": "Cycle 2 start date", "c2_end": "Cycle 2 end date",
           "hsct_date": "Transplant date", "death_date": "Date of death", "relapse_date": "Relapse date",
           "last_followup_date": "Last seen", "diagnosis_date": "Diagnosed on", "best_response": "Response"}


def _renamed_export(tmp: Path) -> Path:
    """CDMX-C's CSV with renamed headers, dates as dd.mm.yyyy and ';' as delimiter."""
    src = EXAMPLES / "mx_multicentro" / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv"
    out = tmp / "export_new_site.csv"
    with src.open(encoding="utf-8") as fh, out.open("w", encoding="utf-8", newline="") as w:
        reader = csv.DictReader(fh)
        writer = csv.writer(w, delimiter=";")
        writer.writerow([RENAMES.get(h, h) for h in reader.fieldnames or []])
        for row in reader:
            cells = []
            for h, v in row.items():
                if h.endswith(("_date", "_start", "_end", "date_of_birth")) and v:
                    v = date.fromisoformat(v).strftime("%d.%m.%Y")
                cells.append(v)
            writer.writerow(cells)
    return out


def _new_site_mappings(tmp: Path) -> Path:
    """A copy of mappings/ plus site ``new-site``: its mapping is CDMX-C's with the columns renamed."""
    mdir = tmp / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    (mdir / "new-site").mkdir()
    site = yaml.safe_load((ROOT / "mappings" / "cdmx-c" / "site.yaml").read_text(encoding="utf-8"))
    site.update(site="new-site", name="A newly onboarded centre")
    (mdir / "new-site" / "site.yaml").write_text(yaml.safe_dump(site, allow_unicode=True), encoding="utf-8")
    text = (ROOT / "mappings" / "cdmx-c" / "cohort_csv.yaml").read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    spec.update(site="new-site", export="monthly_csv")
    spec["reader"].update(delimiter=";", date_format="%d.%m.%Y")

    def rename(node: object) -> object:
        if isinstance(node, dict):
            return {k: (RENAMES.get(v, v) if k == "column" else rename(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        return node

    (mdir / "new-site" / "monthly_csv.yaml").write_text(yaml.safe_dump(rename(spec), allow_unicode=True), encoding="utf-8")
    return mdir


def test_a_new_site_with_renamed_columns_and_other_dates_by_yaml_alone(tmp_path: Path, settings: Settings) -> None:
    mdir = _new_site_mappings(tmp_path)
    s = settings.model_copy(update={"mappings_dir": mdir})
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite3'}")
    store.migrate()
    try:
        new = ingest_file(_renamed_export(tmp_path), "new-site", "monthly_csv", store, settings=s)
        assert (new.rows_read, new.rows_mapped, new.rows_rejected) == (12, 12, 0), new.operation_outcome()
        old = ingest_file(EXAMPLES / "mx_multicentro" / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv", "cdmx-c",
                          "cohort_csv", store, settings=s)
        assert old.rows_rejected == 0
        report = outcomes_report(store.cohort(None), 60.0, "hsct")
        a, b = report["sites"]["new-site"], report["sites"]["cdmx-c"]
        for key in ("n", "sex", "age_groups", "status_at_start", "response", "hsct", "toxicity", "deaths", "survival"):
            assert a[key] == b[key], key
        # the old site's mapping does not read the renamed export: the missing columns are named
        with pytest.raises(ReaderError, match="missing column"):
            ingest_file(_renamed_export(tmp_path), "cdmx-c", "cohort_csv", store, settings=s, dry_run=True)
    finally:
        store.engine.dispose()
