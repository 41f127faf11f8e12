"""No patient name from the examples appears in any stored resource, log line or CLI output."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
import unicodedata

import openpyxl
import pytest

from adapter.config import ROOT
from adapter.store import Store
from tests.conftest import EXAMPLE_FILES, EXAMPLES


def _names() -> set[str]:
    names = set()
    with (EXAMPLES / "hito" / "hito_erm_citometria.csv").open(encoding="cp1252", newline="") as fh:
        names |= {r["Nombre del paciente"] for r in csv.DictReader(fh, delimiter=";")}
    for path, sheet, col in [(EXAMPLES / "hito" / "hito_seguimiento_blinatumomab.xlsx", "Pacientes", "Nombre"),
                             (EXAMPLES / "huanl" / "huanl_blinatumomab_curso_corto.xlsx", "Blina curso corto", "Nombre")]:
        ws = openpyxl.load_workbook(path, read_only=True)[sheet]
        rows = ws.iter_rows(values_only=True)
        header = list(next(rows))
        names |= {r[header.index(col)] for r in rows}
    assert len(names) >= 21
    # whole names and every pair of adjacent name words ("Ramos Trejo"), also with accents folded.
    # Single words are not used: "González" is also in a hospital's own name.
    words = set()
    for n in names:
        parts = n.casefold().replace(",", " ").split()
        for chunk in [" ".join(parts), *(" ".join(parts[i:i + 2]) for i in range(len(parts) - 1))]:
            words.add(chunk)
            words.add("".join(c for c in unicodedata.normalize("NFKD", chunk) if not unicodedata.combining(c)))
    return words


NAME_WORDS = _names()


def _leaks(text: str) -> set[str]:
    low = text.casefold()
    return {w for w in NAME_WORDS if w in low}


def test_no_name_in_stored_resources_or_history(loaded_store: Store) -> None:
    import orjson

    for r in loaded_store.iter_resources():
        assert not _leaks(orjson.dumps(r).decode()), r["resourceType"]
        assert not _leaks(orjson.dumps(loaded_store.history(r["resourceType"], r["id"])).decode())
    for rep in loaded_store.ingestion_reports():
        assert not _leaks(orjson.dumps(rep).decode())


def test_no_name_in_logs_or_cli_output(tmp_path: os.PathLike[str], caplog: pytest.LogCaptureFixture) -> None:
    env = {**os.environ, "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path}/cli.sqlite3", "COLUMNS": "200"}
    out = ""
    with caplog.at_level(logging.DEBUG):
        for site, mapping, path in EXAMPLE_FILES:
            p = subprocess.run([sys.executable, "-m", "adapter", "ingest", str(path), "--site", site, "--mapping", mapping],
                               capture_output=True, text=True, env=env, cwd=ROOT, check=True)
            out += p.stdout + p.stderr
        for cmd in (["summary"], ["export-bundle", "-o", f"{tmp_path}/all.json"], ["validate", f"{tmp_path}/all.json"]):
            p = subprocess.run([sys.executable, "-m", "adapter", *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
            assert p.returncode == 0, p.stdout + p.stderr
            out += p.stdout + p.stderr
    assert "rows read 48 = mapped 48 + rejected 0" in out
    assert "280 resource(s), 280 valid" in out  # 246 mapped + 25 of the study + 9 derived responses (see test_validation)
    assert not _leaks(out)
    assert not _leaks(caplog.text)
    assert not _leaks(open(f"{tmp_path}/all.json", encoding="utf-8").read())
