"""Hostile input is refused with a clear error and nothing stored: XLSX zip bombs and XML entity
bombs, JSON bodies too large or too deep; CSV outputs are safe to open in a spreadsheet."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import openpyxl.xml
import pytest

from adapter.api.fhir_http import MAX_JSON_DEPTH, json_depth
from adapter.config import Settings
from adapter.errors import ReaderError
from adapter.ingest import ingest_file
from adapter.outcomes.render import csv_safe, to_csv
from adapter.readers.xlsx import MAX_RATIO, XlsxReader
from adapter.spec.models import ReaderSpec
from adapter.store import Store
from tests.conftest import EXAMPLES
from tests.server import Server

WORKBOOK = EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx"


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for item in zin.infolist():
            zout.writestr(item, replace.get(item.filename, zin.read(item.filename)))
    return dst


def test_a_zip_bomb_is_refused_before_parsing(tmp_path: Path, settings: Settings) -> None:
    bomb = _rewrite(WORKBOOK, tmp_path / "bomb.xlsx", {"xl/worksheets/sheet1.xml": b" " * (30 * 1024 * 1024)})
    member = next(m for m in zipfile.ZipFile(bomb).infolist() if m.filename == "xl/worksheets/sheet1.xml")
    assert member.file_size > MAX_RATIO * member.compress_size  # it is a bomb by our definition
    with pytest.raises(ReaderError, match="zip bomb"):
        list(XlsxReader(bomb, ReaderSpec(format="xlsx")).rows(None, set()))
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3")
    store.migrate()
    with pytest.raises(ReaderError):
        ingest_file(bomb, "hito", "seguimiento", store, settings=settings)
    assert store.counts() == {}


def test_an_xml_entity_bomb_is_refused(tmp_path: Path) -> None:
    assert openpyxl.xml.DEFUSEDXML  # openpyxl parses with defusedxml
    with zipfile.ZipFile(WORKBOOK) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    laughs = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">'
              '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;">]>')
    body = laughs + sheet.split("?>", 1)[1] if sheet.startswith("<?xml") else laughs + sheet
    bomb = _rewrite(WORKBOOK, tmp_path / "laughs.xlsx", {"xl/worksheets/sheet1.xml": body.replace(
        "<sheetData>", "<sheetData><row r=\"999\"><c r=\"A999\" t=\"inlineStr\"><is><t>&lol3;</t></is></c></row>", 1).encode()})
    with pytest.raises(ReaderError, match="entities or a DTD"):
        list(XlsxReader(bomb, ReaderSpec(format="xlsx")).rows(None, set()))


def test_json_bodies_too_deep_or_too_large_are_refused(api: Server) -> None:
    deep: dict = {}
    node = deep
    for _ in range(MAX_JSON_DEPTH + 5):
        node["extension"] = [{}]
        node = node["extension"][0]
    body = {"resourceType": "Organization", "id": "deep", **deep}
    assert json_depth(body) > MAX_JSON_DEPTH
    r = api.client.put("/Organization/deep", content=json.dumps(body), headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400 and "nests deeper" in r.json()["issue"][0]["diagnostics"]
    big = b'{"resourceType":"Organization","id":"big","name":"' + b"x" * (21 * 1024 * 1024) + b'"}'
    r = api.client.put("/Organization/big", content=big, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 413 and r.json()["resourceType"] == "OperationOutcome"
    assert api.client.get("/Organization/deep").status_code == 404


def test_csv_cells_cannot_run_as_formulas() -> None:
    assert csv_safe("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    assert [csv_safe(v) for v in ("+1+1", "@SUM(A1)", "-cmd", "\tx")] == ["'+1+1", "'@SUM(A1)", "'-cmd", "'\tx"]
    assert [csv_safe(v) for v in ("-0.5", -0.5, 3, "CR", "")] == ["-0.5", -0.5, 3, "CR", ""]
    report = {"sites": {"=cmd|' /C calc'!A0": {"n": 3}}, "pooled": {"n": 3}}
    text = to_csv(report)
    assert "\n'=cmd" in text and "\n=cmd" not in text
    assert io.StringIO(text).readline().strip()  # a header line
