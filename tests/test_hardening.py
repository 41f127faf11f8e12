"""Hostile input is refused with a clear error and nothing stored: XLSX zip bombs and XML entity
bombs, JSON bodies too large or too deep; CSV outputs are safe to open in a spreadsheet."""

from __future__ import annotations

import io
import json
import select
import shutil
import socket
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import openpyxl.xml
import pytest

from adapter.api.fhir_http import MAX_JSON_DEPTH, json_depth
from adapter.config import ROOT, Settings
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


# ------------------------------------------------------------------- hostile files over HTTP


def _rss_mib() -> float:
    """Resident memory of this process (the test server runs in it), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _raw_post(api: Server, path: str, headers: dict[str, str], chunks: Any) -> tuple[int, int]:
    """POST through a raw socket, sending ``chunks`` until the server answers; returns (status,
    bytes of body sent). A real client (curl) behaves the same: it stops when the answer comes."""
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=30)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock.sendall(head.encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:  # the answer came: stop sending
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        reply = b""
        while b"\r\n" not in reply:
            part = sock.recv(4096)
            if not part:
                break
            reply += part
        return int(reply.split(b" ", 2)[1]), sent
    finally:
        sock.close()


def test_a_200_mb_csv_over_the_limit_gets_413_with_bounded_memory(api: Server) -> None:
    """``$ingest`` with a 200 MB CSV (the limit here is 1 MB): a declared Content-Length is refused
    before any byte is read; a streamed (chunked) body is cut off at the limit. Memory stays flat."""
    rows = ("Folio;Expediente;Resultado\n" + "CF-1;000001;0,01\n" * 65536).encode()  # 1 MiB
    boundary = "bnd" + uuid.uuid4().hex
    pre = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"site\"\r\n\r\nhito\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"mapping\"\r\n\r\nerm_citometria\r\n"
           f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.csv\"\r\n\r\n").encode()
    total = len(pre) + 200 * len(rows)
    before = _rss_mib()
    status, sent = _raw_post(api, "/$ingest", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Content-Length": str(total)}, iter([pre, *[rows] * 200]))
    assert status == 413 and sent < 200 * len(rows)

    def chunked() -> Any:
        yield f"{len(pre):x}\r\n".encode() + pre + b"\r\n"
        for _ in range(200):
            yield f"{len(rows):x}\r\n".encode() + rows + b"\r\n"
        yield b"0\r\n\r\n"

    status, sent = _raw_post(api, "/$ingest", {"Content-Type": f"multipart/form-data; boundary={boundary}",
                                               "Transfer-Encoding": "chunked"}, chunked())
    assert status == 413
    assert sent < 50 * len(rows)  # cut off near the limit, not after 200 MB
    assert _rss_mib() - before < 100
    assert api.client.get("/metadata").status_code == 200  # the server is fine


def test_a_10000_deep_json_body_gets_400(api: Server) -> None:
    body = '{"resourceType":"Organization","id":"deep","extension":' + '[{"extension":' * 10000 + "[]" + "}]" * 10000 + "}"
    r = api.client.put("/Organization/deep", content=body, headers={"content-type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert api.client.get("/Organization/deep").status_code == 404


@pytest.mark.parametrize("site,mapping", [("hito", "../../../etc/passwd"), ("../hito", "erm_citometria"),
                                          ("hito", "erm_citometria/../../site"), ("hito", "..")])
def test_mapping_and_site_names_cannot_traverse_paths(api: Server, site: str, mapping: str) -> None:
    path = EXAMPLES / "hito" / "hito_erm_citometria.csv"
    with path.open("rb") as fh:
        r = api.client.post("/$ingest", files={"file": ("../../x.csv", fh)}, data={"site": site, "mapping": mapping})
    assert 400 <= r.status_code < 500 and r.json()["resourceType"] == "OperationOutcome", r.text


def test_hostile_xlsx_files_over_http_get_4xx(api: Server, tmp_path: Path) -> None:
    bomb = _rewrite(WORKBOOK, tmp_path / "bomb.xlsx", {"xl/worksheets/sheet1.xml": b" " * (30 * 1024 * 1024)})
    with bomb.open("rb") as fh:
        r = api.client.post("/$ingest", files={"file": (bomb.name, fh)}, data={"site": "hito", "mapping": "seguimiento"})
    assert r.status_code == 422 and "zip bomb" in r.text
    with zipfile.ZipFile(WORKBOOK) as z:
        sheet = z.read("xl/worksheets/sheet1.xml").decode()
    dtd = '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>'
    laughs = dtd + (sheet.split("?>", 1)[1] if sheet.startswith("<?xml") else sheet)
    bomb = _rewrite(WORKBOOK, tmp_path / "laughs.xlsx", {"xl/worksheets/sheet1.xml": laughs.encode()})
    with bomb.open("rb") as fh:
        r = api.client.post("/$ingest", files={"file": (bomb.name, fh)}, data={"site": "hito", "mapping": "seguimiento"})
    assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome"


def test_a_catastrophically_backtracking_pattern_becomes_row_issues(tmp_path: Path, settings: Settings) -> None:
    """A mapping whose regular expression backtracks catastrophically on the data (``^(.|.)*\\d$``
    takes about 2^60 steps on these comments): each row gets an issue naming its row, column and
    value, and the ingestion finishes."""
    mdir = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mdir)
    spec = mdir / "hito" / "erm_citometria.yaml"
    spec.write_text(spec.read_text(encoding="utf-8").replace(
        "pattern: '^(Evaluación previa a blinatumomab|Control al término del ciclo)'", "pattern: '^(.|.)*\\d$'"),
        encoding="utf-8")
    src = EXAMPLES / "hito" / "hito_erm_citometria.csv"
    small = tmp_path / "hito_erm_citometria.csv"
    small.write_bytes(b"\n".join(src.read_bytes().splitlines()[:4]) + b"\n")
    store = Store(f"sqlite:///{tmp_path}/s.sqlite3")
    store.migrate()
    started = time.monotonic()
    report = ingest_file(small, "hito", "erm_citometria", store, settings=settings.model_copy(update={"mappings_dir": mdir}))
    assert time.monotonic() - started < 60  # a hang guard, not a speed target
    assert report.rows_rejected == 3
    issues = report.operation_outcome()["issue"]
    timed_out = [i for i in issues if "ran out of time" in i.get("diagnostics", "")]
    assert len(timed_out) == 3
    assert all("Comentario" in json.dumps(i) and "row" in json.dumps(i).lower() for i in timed_out), timed_out[0]
