"""`adapter scan`: a WhiteRabbit-like profile of every example export (the real CLI, in a subprocess)
that shows no name, record number or birth date, and a draft mapping that loads, guesses the same
patient column as the site's own mapping, and maps every row in a dry run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapter.config import ROOT, Settings
from adapter.ingest import ingest_file
from adapter.readers import reader_for
from adapter.scan import _date_formats, profile_column, shape
from adapter.spec import load_mapping
from adapter.store import Store
from tests.conftest import EXAMPLES

MX = EXAMPLES / "mx_multicentro"
CDMX_A_DD = MX / "CDMX-A" / "BlinaLLAMulticentro_DataDictionary_2025-01-15.csv"

# (site, its mapping, file, extra scan arguments, columns that identify a patient, as the reader names them)
CASES = [
    ("hito", "erm_citometria", EXAMPLES / "hito" / "hito_erm_citometria.csv", [],
     ["Expediente", "Nombre del paciente", "Fecha de nacimiento"]),
    ("hito", "seguimiento", EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx", [],
     ["Expediente", "Nombre", "Fecha de nacimiento"]),
    ("huanl", "curso_corto", EXAMPLES / "huanl" / "huanl_blinatumomab_curso_corto.xlsx", [],
     ["Registro", "Nombre"]),
    ("uk-infants", "mrd_lab", EXAMPLES / "uk_infants" / "uk_mrd_lab_ORU_R01.hl7", [],
     ["PID-3[MR].1", "PID-3[NH].1", "PID-5.1", "PID-5.2", "PID-7"]),
    ("uk-infants", "registry", EXAMPLES / "uk_infants" / "uk_infant_blinatumomab_registry.csv", [],
     ["Hospital number", "NHS number", "Surname", "Forename", "Date of birth"]),
    ("cdmx-a", "redcap", MX / "CDMX-A" / "BlinaLLAMulticentro_DATA_2025-01-15_1032.csv",
     ["--data-dictionary", str(CDMX_A_DD)], ["expediente", "nombre", "apellido_paterno", "apellido_materno",
                                             "fecha_nacimiento"]),
    ("cdmx-b", "lab_erm", MX / "CDMX-B" / "ERM_CDMX-B_ORU_R01.hl7", [], ["PID-3[MR].1", "PID-5.1", "PID-5.2", "PID-7"]),
    ("cdmx-b", "eventos", MX / "CDMX-B" / "eventos_clinicos_CDMX-B.csv", [], ["expediente"]),
    ("cdmx-c", "cohort_csv", MX / "CDMX-C" / "blinatumomab_cohort_CDMX-C.csv", [],
     ["mrn", "first_name", "last_name", "date_of_birth"]),
    ("qro-a", "base_xlsx", MX / "QRO-A" / "base_blinatumomab_QRO-A.xlsx", [],
     ["Expediente", "Nombre(s)", "Apellido paterno", "Apellido materno", "Fecha de nacimiento"]),
]


def _identifying_values(site: str, mapping: str, path: Path, columns: list[str]) -> set[str]:
    """Every value of the identifying columns, read with the site's own reader settings: whole
    values, each word of 4+ letters of a name, and dates of birth in the forms a scan could print."""
    m = load_mapping(site, mapping, ROOT / "mappings")
    reader = reader_for(m.spec.reader.format)(path, m.spec.reader)
    out: set[str] = set()
    for sheet in reader.sheets():
        for row in reader.rows(sheet, set(columns) if m.spec.reader.format == "hl7v2" else set()):
            for c in columns:
                v = row.cells.get(c)
                if v is None or not str(v).strip():
                    continue
                text = v.date().isoformat() if hasattr(v, "date") else str(v).strip()
                out.add(text)
                out |= {w for w in text.replace("^", " ").split() if len(w) >= 4}
    assert out, f"no identifying value read from {path.name}: the test would prove nothing"
    return out


def _scan(path: Path, site: str, extra: list[str], out: Path) -> tuple[str, list[dict[str, Any]]]:
    env = {**os.environ, "COLUMNS": "250"}
    p = subprocess.run([sys.executable, "-m", "adapter", "scan", str(path), "--site", site, "--export", "draft",  # noqa: S603
                        "--out", str(out), *extra], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr, json.loads((out / "draft.scan.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mappings_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's mappings (shared code tables included), where the drafts are written."""
    dst = tmp_path_factory.mktemp("scan") / "mappings"
    shutil.copytree(ROOT / "mappings", dst)
    return dst


@pytest.mark.parametrize(("site", "mapping", "path", "extra", "identifying"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_scan_masks_identities_and_drafts_a_mapping_that_runs(
        site: str, mapping: str, path: Path, extra: list[str], identifying: list[str],
        mappings_copy: Path, tmp_path: Path) -> None:
    name = f"s-{site}-{mapping}".replace("_", "-")[:31].rstrip("-")
    folder = mappings_copy / name
    shutil.rmtree(folder, ignore_errors=True)
    out, profile = _scan(path, name, extra, folder)

    # 1. the profile covers every row and names the columns as the reader does
    real_store = Store(f"sqlite:///{tmp_path}/real.sqlite3")
    real_store.migrate()
    reader_rows = ingest_file(path, site, mapping, real_store, settings=Settings(database_url="sqlite://", id_key="k"),
                              dry_run=True)
    assert sum(t["rows"] + t["malformed"] for t in profile) == reader_rows.rows_read
    columns = {c["name"]: c for t in profile for c in t["columns"]}
    for c in identifying:
        if c in columns:
            assert columns[c]["masked"], c

    # 2. no identifying value appears in what the scan printed or wrote
    secrets = _identifying_values(site, mapping, path, identifying)
    written = out + (folder / "draft.scan.json").read_text(encoding="utf-8") + (folder / "draft.yaml").read_text(encoding="utf-8")
    low = written.casefold()
    leaked = sorted(s for s in secrets if s.casefold() in low)
    assert not leaked, f"{len(leaked)} identifying value(s) in the scan output"

    # 3. the draft loads, picks the site's own patient column, and maps every row in a dry run
    draft = load_mapping(name, "draft", mappings_copy)
    real = load_mapping(site, mapping, ROOT / "mappings")
    assert draft.sheets[0].patient_column == real.sheets[0].patient_column
    store = Store(f"sqlite:///{tmp_path}/draft.sqlite3")
    store.migrate()
    report = ingest_file(path, name, "draft", store, settings=Settings(database_url="sqlite://", id_key="k",
                                                                     mappings_dir=mappings_copy), dry_run=True)
    assert report.rows_rejected == 0, [(i.row, i.column, i.value, i.reason) for i in report.issues][:3]
    assert report.rows_mapped == report.rows_read > 0
    assert report.counts()["Patient"]["created"] >= 1


def test_column_types_and_masking_rules() -> None:
    # day-first and month-first both read these: both are reported (ambiguous); ISO is exact
    assert _date_formats(["01/02/2020", "03/04/2021"])[:2] == ["%d/%m/%Y", "%m/%d/%Y"]
    assert _date_formats(["13/02/2020"]) == ["%d/%m/%Y"]
    # HL7 DTM: 12 digits are %Y%m%d%H%M, never %Y%m%d%H%M%S read with one-digit fields
    assert _date_formats(["201611271100"]) == ["%Y%m%d%H%M"]
    p = profile_column("Fecha de toma", ["01/02/2020", "15/03/2020", "", None])
    assert (p.type, p.blank, p.date_formats[0], p.minimum, p.maximum) == ("date", 2, "%d/%m/%Y", "2020-02", "2020-03")
    assert [v for v, _ in p.top] == ["2020-02", "2020-03"]  # months, never whole dates

    counts = profile_column("Leucocitos (/µL)", ["1200", "3400", "15000", "870", "2300", "5600"])
    assert counts.type == "integer" and counts.masked is None and counts.maximum == "15000"
    record = profile_column("No. de registro", ["001234", "004567", "009876", "002222", "007777"])
    assert record.masked and all(v == "999999" for v, _ in record.top)
    ids = profile_column("Folio", ["BX-0001", "BX-0002", "BX-0003", "BX-0004", "BX-0005"])
    assert ids.masked and "identifiers" in ids.masked and ids.top == [("AA-9999", 5)]
    names = profile_column("Responsable", ["Ana López", "Juan Pérez", "María Soto", "Luis Ruiz", "Eva Díaz"])
    assert names.masked and "names" in names.masked
    notes = profile_column("Comentario", ["muestra hemolizada"])
    assert notes.masked and "free text" in notes.masked
    coded = profile_column("Sexo", ["Femenino", "Masculino", "Femenino", "Femenino"])
    assert coded.type == "code" and coded.masked is None and coded.top[0] == ("Femenino", 3)
    assert profile_column("MRD %", ["0,01", "1,5", "0.2"]).type == "decimal"
    assert shape("ENG8971488") == "AAA9999999"
