"""`adapter scan`: a WhiteRabbit-like profile of every example export (the real CLI, in a subprocess)
that shows no name, record number or birth date, and a draft mapping that loads, guesses the same
patient column as the site's own mapping, and maps every row in a dry run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapter.config import ROOT, Settings
from adapter.errors import MappingSpecError
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
    ("suzhou", "research_workbook", EXAMPLES / "suzhou" / "suzhou_research_workbook.xlsx", [], ["姓名 (Name)"]),
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

    # 3. code columns suggest a table named after the column, never a placeholder
    draft_text = (folder / "draft.yaml").read_text(encoding="utf-8")
    tables = re.findall(r"lookup: \{table: ([^}]+)\}", draft_text)
    assert "TODO" not in tables and all(re.fullmatch(r"[a-z][a-z0-9_]*", t) for t in tables)

    # 4. the draft loads, picks the site's own patient column, and maps every row in a dry run
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


def _chinese_workbook(path: Path) -> tuple[list[str], list[str]]:
    """A three-sheet research workbook with Chinese headers (patients, MRD results, adverse events):
    record numbers 住院号, names 姓名 and a phone 联系电话 on the patient sheet, MRD as written with
    '<0.01' and '-' (not done), CRS/ICANS grades. Returns the names and phone numbers written."""
    from datetime import datetime

    import openpyxl

    family, given = "王李张刘陈杨赵黄周吴", ["小明", "丽华", "建国", "海燕", "志强", "秀英"]
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "患者"
    ws.append(["住院号", "姓名", "性别", "出生日期", "联系电话"])
    names, phones = [], []
    for i in range(30):
        name, phone = family[i % 10] + given[i % 6], f"138{i:08d}"
        names.append(name)
        phones.append(phone)
        ws.append([f"ZY{200100 + i}", name, "男" if i % 2 else "女", datetime(2010 + i % 8, 1 + i % 12, 1 + i % 27), phone])
    mrd = wb.create_sheet("微小残留病")
    mrd.append(["住院号", "检测日期", "MRD(%)", "方法"])
    for i in range(30):
        for k, value in enumerate(["1.2" if i % 3 else "-", "<0.01" if i % 2 else "0.05"]):
            mrd.append([f"ZY{200100 + i}", datetime(2023, 1 + k * 2, 1 + i % 27), value, "流式细胞术"])
    ae = wb.create_sheet("不良事件")
    ae.append(["住院号", "事件", "分级", "发生日期"])
    for i in range(0, 30, 2):
        ae.append([f"ZY{200100 + i}", "CRS" if i % 4 else "ICANS", 1 + i % 3, datetime(2023, 2, 1 + i % 27)])
    wb.save(path)
    return names, phones


def test_scan_drafts_every_sheet_of_a_workbook_in_another_script(mappings_copy: Path, tmp_path: Path) -> None:
    path = tmp_path / "研究数据.xlsx"
    names, phones = _chinese_workbook(path)
    folder = mappings_copy / "s-zh"
    out, profile = _scan(path, "s-zh", [], folder)
    tables = {t["sheet"]: {c["name"]: c for c in t["columns"]} for t in profile}
    assert set(tables) == {"患者", "微小残留病", "不良事件"}

    # names and phones are masked, identifying, and never printed or written; the record number is the key
    patients = tables["患者"]
    assert patients["姓名"]["identifying"] and patients["联系电话"]["identifying"]
    assert not patients["住院号"]["identifying"] and patients["住院号"]["unique"]
    written = out + "".join(f.read_text(encoding="utf-8") for f in folder.iterdir())
    assert not [v for v in names + phones if v in written]
    site = (folder / "site.yaml").read_text(encoding="utf-8")
    assert 'identifying_columns: ["姓名", "联系电话"]' in site

    # MRD as written: a quantity ('<0.01' kept apart from numbers), '-' read as no value by the reader
    assert tables["微小残留病"]["MRD(%)"]["type"] == "quantity"
    assert tables["微小残留病"]["MRD(%)"]["nullTokens"] == ["-"]
    draft = load_mapping("s-zh", "draft", mappings_copy)
    assert draft.spec.reader.null_values == ["-"]
    assert draft.sheets[0].patient_column == "住院号"

    # the other sheets are drafted too, linked by their record-number column, with the concepts they hold
    text = (folder / "draft.yaml").read_text(encoding="utf-8")
    mrd_block = text[text.index('sheet: "微小残留病"'):text.index('sheet: "不良事件"')]
    assert "proposed concept: mrd" in mrd_block and 'patient: {column: "住院号"' in mrd_block
    ae_block = text[text.index('sheet: "不良事件"'):]
    assert "proposed concept: adverse_event" in ae_block and 'patient: {column: "住院号"' in ae_block

    # the draft (patient sheet active) maps every row; sex 男/女 through the shared gender table
    store = Store(f"sqlite:///{tmp_path}/draft.sqlite3")
    store.migrate()
    report = ingest_file(path, "s-zh", "draft", store, settings=Settings(database_url="sqlite://", id_key="k",
                                                                       mappings_dir=mappings_copy), dry_run=True)
    assert report.rows_rejected == 0, [(i.row, i.column, i.reason) for i in report.issues][:3]
    assert report.counts()["Patient"]["created"] == 30

    # a mapping that reads a declared identifying column is refused when it loads
    named = text.replace("export: draft", "export: names").replace('patient: {column: "住院号", pipe: [text]}',
                                                                   'patient: {column: "姓名", pipe: [text]}', 1)
    (folder / "names.yaml").write_text(named, encoding="utf-8")
    with pytest.raises(MappingSpecError, match="identifies a person"):
        load_mapping("s-zh", "names", mappings_copy)


def test_columns_of_no_value_texts_quantities_and_names_in_caseless_scripts() -> None:
    p = profile_column("MRD", ["<0.01", "0.5", "NA", "n/a", "1.2", ">95"])
    assert (p.type, p.null_tokens, p.blank, p.minimum, p.maximum) == ("quantity", ["NA", "n/a"], 2, "0.5", "1.2")
    assert profile_column("estado", ["-", "-", "-"]).null_tokens == []  # all '-': a value, not a placeholder
    han = profile_column("负责人", ["王小明", "李丽华", "张建国", "刘海燕", "陈志强"])
    assert han.masked and han.identifying
    hangul = profile_column("담당", ["김민준", "이서연", "박지호", "최수아", "정예준"])
    assert hangul.identifying
    assert not profile_column("诊断", ["急性淋巴细胞白血病"] * 5).identifying
    assert profile_column("Nachname", ["x"]).identifying and profile_column("Фамилия", ["x"]).identifying
